"""An IPMI 2.0 BMC for the tests, made of pyghmi's BMC server (pyghmi
speaks RMCP+; this file only holds a machine's power and boot device in
memory). Usage: ipmi_bmc.py --port N [--user U --password P]"""
import argparse
import sys

import pyghmi.ipmi.bmc as bmc


class Machine(bmc.Bmc):
    def __init__(self, authdata, port):
        super().__init__(authdata, port=port, address="127.0.0.1")
        self.power = "off"
        self.boot = "default"

    def get_power_state(self):
        return self.power

    def power_on(self):
        self.power = "on"

    def power_off(self):
        self.power = "off"

    def power_shutdown(self):
        self.power = "off"

    def power_cycle(self):
        self.power = "on"

    def power_reset(self):
        self.power = "on"

    def get_boot_device(self):
        return self.boot

    def set_boot_device(self, device):
        self.boot = device

    def is_active(self):
        return self.power == "on"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="password")
    a = p.parse_args()
    print("listening", flush=True)
    sys.stdout.close()
    Machine({a.user: a.password}, a.port).listen()
