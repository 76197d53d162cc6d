//! Kubernetes versions, and how a Cluster's version and images follow from
//! the MachineImages registered: a Cluster runs a version some image
//! carries (the newest when it names none), its Machines boot that image,
//! and they are at least as large as the image says its nodes must be.

use std::fmt;
use std::str::FromStr;

use crate::cluster::ClusterSpec;
use crate::image::{MachineImage, MachineSize};
use crate::quantity::{Cpu, Memory};
use crate::validation::{FieldError, FieldErrorKind};

/// The version the dev image registers as: its stand-ins for kubeadm and
/// the API server (for fast tests, `scripts/build-dev-image.sh`) run no
/// Kubernetes, but a Cluster needs a version to be created.
pub const DEV_IMAGE_VERSION: &str = "1.31.2";

/// A Kubernetes release, `MAJOR.MINOR.PATCH` ("1.35.4"), ordered as
/// releases are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl FromStr for KubeVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a version such as 1.35.4");
        let mut parts = s.split('.').map(|p| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                p.parse::<u32>().ok()
            }
        });
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Some(major)), Some(Some(minor)), Some(Some(patch)), None) => Ok(KubeVersion {
                major,
                minor,
                patch,
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The images that carry a Kubernetes version, newest version first, then
/// by name: the image a version's Machines boot is the first of its version.
fn catalog(images: &[MachineImage]) -> Vec<(KubeVersion, &MachineImage)> {
    let mut v: Vec<(KubeVersion, &MachineImage)> = images
        .iter()
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .filter_map(|i| {
            let v = i.spec.kubernetes_version.as_deref()?.parse().ok()?;
            Some((v, i))
        })
        .collect();
    v.sort_by(|(va, a), (vb, b)| {
        vb.cmp(va)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    v
}

fn image_name(i: &MachineImage) -> String {
    i.metadata.name.clone().unwrap_or_default()
}

/// Versions there are, for error messages: "1.35.4, 1.31.2".
fn listed(cat: &[(KubeVersion, &MachineImage)]) -> String {
    let mut vs: Vec<String> = cat.iter().map(|(v, _)| v.to_string()).collect();
    vs.dedup();
    if vs.is_empty() {
        "none (register a MachineImage with spec.kubernetesVersion)".into()
    } else {
        vs.join(", ")
    }
}

fn check_minimum(
    field: &str,
    role: &str,
    cpu: Cpu,
    memory: Memory,
    image: &MachineImage,
    min: MachineSize,
    errs: &mut Vec<FieldError>,
) {
    if cpu < min.cpu {
        errs.push(FieldError::invalid(
            format!("{field}.cpu"),
            format!(
                "{cpu}: MachineImage {:?} needs at least {} vCPUs for a {role} node",
                image_name(image),
                min.cpu
            ),
        ));
    }
    if memory < min.memory {
        errs.push(FieldError::invalid(
            format!("{field}.memory"),
            format!(
                "{memory}: MachineImage {:?} needs at least {} for a {role} node",
                image_name(image),
                min.memory
            ),
        ));
    }
}

/// The image a Machine of a `version` cluster boots when its group names
/// none: the first registered image of that version (by name).
pub fn image_for(version: &str, images: &[MachineImage]) -> Option<String> {
    let v: KubeVersion = version.parse().ok()?;
    catalog(images)
        .into_iter()
        .find(|(iv, _)| *iv == v)
        .map(|(_, i)| image_name(i))
}

/// Sets a Cluster's version from the registered images, and checks the
/// spec against them: `spec.kubernetesVersion` when unset becomes the old
/// spec's (on update) or the newest registered; it must be carried by a
/// registered image and cannot change (no upgrades yet); a named image
/// that exists must carry the cluster's version (a group that names none
/// boots the version's, [`image_for`]); and each Machine must be at least
/// its image's minimum for its role.
pub fn admit_cluster(
    spec: &mut ClusterSpec,
    old: Option<&ClusterSpec>,
    images: &[MachineImage],
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let cat = catalog(images);
    const FIELD: &str = "spec.kubernetesVersion";
    if spec.kubernetes_version.is_empty() {
        match (old, cat.first()) {
            (Some(o), _) => spec.kubernetes_version = o.kubernetes_version.clone(),
            (None, Some((v, _))) => spec.kubernetes_version = v.to_string(),
            (None, None) => {
                errs.push(FieldError::new(
                    FIELD,
                    FieldErrorKind::Required,
                    format!(
                        "no version to default to: registered versions: {}",
                        listed(&cat)
                    ),
                ));
                return errs;
            }
        }
    }
    if let Some(o) = old
        && o.kubernetes_version != spec.kubernetes_version
    {
        errs.push(FieldError::new(
            FIELD,
            FieldErrorKind::Forbidden,
            format!(
                "{:?} to {:?}: a cluster's version cannot change (upgrades are not supported yet)",
                o.kubernetes_version, spec.kubernetes_version
            ),
        ));
        return errs;
    }
    let version: KubeVersion = match spec.kubernetes_version.parse() {
        Ok(v) => v,
        Err(e) => {
            errs.push(FieldError::invalid(FIELD, e));
            return errs;
        }
    };
    let Some((_, default_image)) = cat.iter().find(|(v, _)| *v == version) else {
        errs.push(FieldError::new(
            FIELD,
            FieldErrorKind::NotSupported,
            format!(
                "{version}: no MachineImage carries this version; registered versions: {}",
                listed(&cat)
            ),
        ));
        return errs;
    };
    // The images are checked, not written into the spec: a list the server
    // fills in would differ from the manifest on every `kubectl apply`.
    let resolve = |field: &str, named: &Option<String>, errs: &mut Vec<FieldError>| {
        let name = named.clone().unwrap_or_else(|| image_name(default_image));
        let image = images.iter().find(|i| image_name(i) == name)?;
        match image.spec.kubernetes_version.as_deref() {
            Some(v) if v.parse::<KubeVersion>().ok() == Some(version) => Some(image),
            other => {
                errs.push(FieldError::invalid(
                    format!("{field}.image"),
                    format!(
                        "MachineImage {name:?} carries Kubernetes {}, the cluster runs {version}",
                        other.unwrap_or("no version")
                    ),
                ));
                None
            }
        }
    };
    let cp = &spec.control_plane;
    if let Some(image) = resolve("spec.controlPlane", &cp.image, &mut errs)
        && let Some(min) = &image.spec.minimum
    {
        check_minimum(
            "spec.controlPlane",
            "control-plane",
            cp.cpu,
            cp.memory,
            image,
            min.control_plane,
            &mut errs,
        );
    }
    for (i, pool) in spec.node_pools.iter().enumerate() {
        let field = format!("spec.nodePools[{i}]");
        if let Some(image) = resolve(&field, &pool.image, &mut errs)
            && let Some(min) = &image.spec.minimum
        {
            check_minimum(
                &field,
                "worker",
                pool.cpu,
                pool.memory,
                image,
                min.worker,
                &mut errs,
            );
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodePool;
    use serde_json::json;

    fn image(name: &str, version: Option<&str>, min: bool) -> MachineImage {
        let mut spec = json!({"kernel": {"url": "file:///k"}});
        if let Some(v) = version {
            spec["kubernetesVersion"] = json!(v);
        }
        if min {
            spec["minimum"] = json!({"controlPlane": {"cpu": 2, "memory": "2Gi"}, "worker": {"cpu": 1, "memory": "1Gi"}});
        }
        serde_json::from_value(
            json!({"apiVersion": "paddock.io/v1alpha1", "kind": "MachineImage",
            "metadata": {"name": name}, "spec": spec}),
        )
        .unwrap()
    }

    fn spec(version: &str) -> ClusterSpec {
        let mut s: ClusterSpec = serde_json::from_value(json!({
            "controlPlane": {"cpu": 2, "memory": "2Gi"},
            "nodePools": [{"name": "a", "cpu": 1, "memory": "1Gi"}],
        }))
        .unwrap();
        s.kubernetes_version = version.into();
        s
    }

    fn registered() -> Vec<MachineImage> {
        vec![
            image("dev", None, false),
            image("kube-1.31.2", Some("1.31.2"), true),
            image("kube-1.35.4", Some("1.35.4"), true),
            image("kube-1.35.4-b", Some("1.35.4"), true),
        ]
    }

    #[test]
    fn versions_parse_and_order_as_releases() {
        let a: KubeVersion = "1.9.10".parse().unwrap();
        let b: KubeVersion = "1.35.4".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1.35.4");
        for bad in [
            "", "1.35", "v1.35.4", "1.35.4.1", "1..4", "latest", "1.35.x",
        ] {
            assert!(bad.parse::<KubeVersion>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_is_the_newest_version_and_its_first_image() {
        let mut s = spec("");
        assert!(admit_cluster(&mut s, None, &registered()).is_empty());
        assert_eq!(s.kubernetes_version, "1.35.4");
        assert_eq!(s.control_plane.image, None, "the spec stays as written");
        assert_eq!(
            image_for("1.35.4", &registered()).as_deref(),
            Some("kube-1.35.4")
        );
        assert_eq!(image_for("1.30.0", &registered()), None);
        // An update that leaves the version out keeps the stored one.
        let old = s.clone();
        let mut again = spec("");
        assert!(admit_cluster(&mut again, Some(&old), &registered()).is_empty());
        assert_eq!(again.kubernetes_version, "1.35.4");
    }

    #[test]
    fn a_version_without_an_image_is_refused_with_the_versions_there_are() {
        let mut s = spec("1.30.0");
        let errs = admit_cluster(&mut s, None, &registered());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.kubernetesVersion");
        assert_eq!(errs[0].kind, FieldErrorKind::NotSupported);
        assert!(errs[0].message.contains("1.35.4, 1.31.2"), "{errs:?}");
        let mut none = spec("");
        let errs = admit_cluster(&mut none, None, &[image("dev", None, false)]);
        assert_eq!(errs[0].kind, FieldErrorKind::Required, "{errs:?}");
        assert!(
            errs[0].message.contains("register a MachineImage"),
            "{errs:?}"
        );
    }

    #[test]
    fn machines_smaller_than_the_image_needs_are_refused() {
        let mut s = spec("1.35.4");
        s.control_plane.memory = Memory::from_gib(1);
        s.node_pools[0].cpu = 0;
        s.node_pools.push(NodePool {
            name: "b".into(),
            replicas: 1,
            cpu: 1,
            memory: Memory::from_mib(512),
            disk: Memory::from_gib(10),
            image: None,
        });
        let errs = admit_cluster(&mut s, None, &registered());
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.controlPlane.memory",
                "spec.nodePools[0].cpu",
                "spec.nodePools[1].memory"
            ]
        );
        assert!(
            errs[0]
                .message
                .contains("needs at least 2Gi for a control-plane node")
        );
    }

    #[test]
    fn a_named_image_must_carry_the_version_and_the_version_cannot_change() {
        let mut s = spec("1.35.4");
        s.node_pools[0].image = Some("kube-1.31.2".into());
        let errs = admit_cluster(&mut s, None, &registered());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.nodePools[0].image");
        // A named image not (yet) registered is the agent's to report.
        let mut s = spec("1.35.4");
        s.control_plane.image = Some("custom".into());
        assert!(admit_cluster(&mut s, None, &registered()).is_empty());
        let old = spec("1.31.2");
        let mut s = spec("1.35.4");
        let errs = admit_cluster(&mut s, Some(&old), &registered());
        assert_eq!(errs[0].kind, FieldErrorKind::Forbidden, "{errs:?}");
    }
}
