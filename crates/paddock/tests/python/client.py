"""The official Kubernetes Python client against a Paddock server: CRUD,
errors as Status objects, pagination with remainingItemCount, a watch, and
Paddock's own kinds through CustomObjectsApi. Usage: client.py KUBECONFIG.
Exits non-zero (an AssertionError or ApiException) on the first thing that
does not work as it does against Kubernetes."""

import json
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
core = client.CoreV1Api()
custom = client.CustomObjectsApi()
NS = "pyclient"


def refused(call, status, reason):
    """The call fails with `status`, and its body is a Status with `reason`."""
    try:
        call()
    except ApiException as e:
        assert e.status == status, f"want {status}, got {e.status}: {e.body}"
        body = json.loads(e.body)
        assert body["kind"] == "Status" and body["reason"] == reason, body
        return body
    raise AssertionError(f"want a {status}, the call succeeded")


core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))

# Create, read, replace, patch, delete.
cm = core.create_namespaced_secret(
    NS,
    client.V1Secret(
        metadata=client.V1ObjectMeta(name="one", labels={"app": "py"}), data={"k": "dg=="}
    ),
)
assert cm.metadata.uid and cm.metadata.resource_version, cm.metadata
got = core.read_namespaced_secret("one", NS)
assert got.data == {"k": "dg=="}, got.data
got.data["k"] = "dw=="
replaced = core.replace_namespaced_secret("one", NS, got)
assert replaced.data["k"] == "dw=="
assert int(replaced.metadata.resource_version) > int(cm.metadata.resource_version)
patched = core.patch_namespaced_secret("one", NS, {"data": {"x": "eQ=="}})
assert patched.data == {"k": "dw==", "x": "eQ=="}, patched.data

# Errors are Status objects with Kubernetes' reasons.
refused(lambda: core.read_namespaced_secret("none", NS), 404, "NotFound")
refused(
    lambda: core.create_namespaced_secret(
        NS, client.V1Secret(metadata=client.V1ObjectMeta(name="one"))
    ),
    409,
    "AlreadyExists",
)
stale = got
stale.metadata.resource_version = cm.metadata.resource_version
refused(lambda: core.replace_namespaced_secret("one", NS, stale), 409, "Conflict")
body = refused(
    lambda: core.create_namespaced_secret(
        NS, client.V1Secret(metadata=client.V1ObjectMeta(name="Not_A_Name"))
    ),
    422,
    "Invalid",
)
assert any(c["field"] == "metadata.name" for c in body["details"]["causes"]), body

# Pagination: pages of 10 over 26 objects, with the count of what remains.
for i in range(25):
    core.create_namespaced_secret(
        NS, client.V1Secret(metadata=client.V1ObjectMeta(name=f"page-{i:02}"))
    )
seen, token, first = [], None, None
while True:
    page = core.list_namespaced_secret(NS, limit=10, _continue=token)
    if first is None:
        first = page
    seen += [c.metadata.name for c in page.items]
    token = page.metadata._continue
    if not token:
        assert page.metadata.remaining_item_count is None
        break
    assert page.metadata.remaining_item_count == 26 - len(seen), (
        len(seen),
        page.metadata.remaining_item_count,
    )
assert len(seen) == 26 and seen == sorted(seen), seen
assert first.metadata.remaining_item_count == 16, first.metadata
labelled = core.list_namespaced_secret(NS, label_selector="app=py")
assert [c.metadata.name for c in labelled.items] == ["one"]

# A watch from the list's revision sees what happens after it, in order.
events = []
started = threading.Event()


def watching():
    w = watch.Watch()
    started.set()
    for ev in w.stream(
        core.list_namespaced_secret,
        NS,
        resource_version=first.metadata.resource_version,
        field_selector="metadata.name=watched",
        timeout_seconds=30,
    ):
        events.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()


t = threading.Thread(target=watching)
t.start()
started.wait()
core.create_namespaced_secret(
    NS, client.V1Secret(metadata=client.V1ObjectMeta(name="watched"), data={"a": "MQ=="})
)
core.patch_namespaced_secret("watched", NS, {"data": {"a": "Mg=="}})
core.delete_namespaced_secret("watched", NS)
t.join(60)
assert not t.is_alive(), "the watch did not end"
assert events == [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")], events

# Paddock's own kinds: a Cluster, and a refusal that names the field.
cluster = custom.create_namespaced_custom_object(
    "paddock.io",
    "v1alpha1",
    NS,
    "clusters",
    {
        "apiVersion": "paddock.io/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "py"},
        "spec": {"nodePools": [{"name": "default", "replicas": 1, "memory": "1.5Gi"}]},
    },
)
assert cluster["spec"]["nodePools"][0]["memory"] == "1536Mi", cluster["spec"]
body = refused(
    lambda: custom.create_namespaced_custom_object(
        "paddock.io",
        "v1alpha1",
        NS,
        "clusters",
        {
            "apiVersion": "paddock.io/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": "bad"},
            "spec": {"controlPlane": {"replicas": -1}},
        },
    ),
    422,
    "Invalid",
)
# In Kubernetes' words, not the decoder's.
assert (
    "spec.controlPlane.replicas: Invalid value: -1: must be greater than or equal to 0"
    in body["message"]
), body["message"]
clusters = custom.list_namespaced_custom_object("paddock.io", "v1alpha1", NS, "clusters")
assert [c["metadata"]["name"] for c in clusters["items"]] == ["py"], clusters
core.delete_namespaced_secret("one", NS)
refused(lambda: core.read_namespaced_secret("one", NS), 404, "NotFound")
print("python client: ok")
