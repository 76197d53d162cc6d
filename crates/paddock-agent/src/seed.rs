//! The cloud-init NoCloud seed: a small FAT volume labelled `cidata` with
//! `meta-data`, `user-data` and a version 2 `network-config`.

use std::io::{Seek, Write};
use std::path::Path;

/// What goes into a Machine's seed.
#[derive(Debug, Clone)]
pub struct Seed {
    pub instance_id: String,
    pub hostname: String,
    pub mac: String,
    /// Overlay address in CIDR form.
    pub address: String,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub mtu: u32,
    /// cloud-init user-data (bootstrap data); `#cloud-config` when none.
    pub user_data: String,
    /// The bootstrap data's network-config, when it has one.
    pub network_config: Option<String>,
}

impl Seed {
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            self.instance_id, self.hostname
        )
    }

    pub fn network_config(&self) -> String {
        if let Some(nc) = &self.network_config {
            return nc.clone();
        }
        paddock_bootstrap::network_config(&self.mac, &self.address, self.gateway, self.mtu)
    }

    /// Writes the seed volume to `path` (replacing it).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.set_len(2 * 1024 * 1024)?;
        fatfs::format_volume(
            &mut f,
            fatfs::FormatVolumeOptions::new().volume_label(*b"cidata     "),
        )?;
        f.rewind()?;
        {
            let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new())?;
            let root = fs.root_dir();
            let user_data = if self.user_data.is_empty() {
                "#cloud-config\n".to_owned()
            } else {
                self.user_data.clone()
            };
            for (name, body) in [
                ("meta-data", self.meta_data()),
                ("user-data", user_data),
                ("network-config", self.network_config()),
            ] {
                let mut file = root.create_file(name)?;
                file.truncate()?;
                file.write_all(body.as_bytes())?;
            }
        }
        f.sync_all()?;
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn seed_volume_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let seed = Seed {
            instance_id: "uid-1".into(),
            hostname: "demo-cp-0".into(),
            mac: "52:54:00:00:00:01".into(),
            address: "10.64.0.2/24".into(),
            gateway: Some(std::net::Ipv4Addr::new(10, 64, 0, 1)),
            mtu: 1450,
            user_data: String::new(),
            network_config: None,
        };
        let p = dir.path().join("seed.img");
        seed.write(&p).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim(), "cidata");
        let mut s = String::new();
        fs.root_dir()
            .open_file("network-config")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert!(
            s.contains("addresses: [10.64.0.2/24]")
                && s.contains("via: 10.64.0.1")
                && s.contains("mtu: 1450"),
            "{s}"
        );
    }
}
