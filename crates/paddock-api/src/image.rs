//! `MachineImage`: what a VM boots, a kernel and initrd or a disk image.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::{Cpu, Memory};
use crate::validation::{FieldError, FieldErrorKind, Validate};
use crate::version::KubeVersion;

/// A bootable image for Machines: a kernel (+ initrd) booted directly, a
/// disk image booted by the firmware, or a kernel booted directly with the
/// disk image as its root disk (`vda`; say `root=/dev/vda` in `cmdline`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "paddock.io",
    version = "v1alpha1",
    kind = "MachineImage",
    shortname = "mi",
    category = "paddock"
)]
#[serde(rename_all = "camelCase")]
pub struct MachineImageSpec {
    /// Direct kernel boot: the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Artifact>,
    /// Direct kernel boot: the initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<Artifact>,
    /// Extra kernel command line for direct kernel boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Disk-image boot: a qcow2 or raw image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskImage>,
    /// The Kubernetes version this image's nodes run, such as "1.35.4":
    /// Clusters of that version boot it. Unset for an image that is not a
    /// Kubernetes node image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// The least a Machine booting this image needs, by role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<ImageMinimum>,
    /// The image runs stand-ins for Kubernetes (the dev image, for fast
    /// tests): its Machines are ready when their guests are, as no
    /// Kubernetes Node reports on them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stand_in: bool,
}

/// The least vCPUs and memory a node of an image needs: a control plane
/// (API server, etcd, controllers) needs far more than a worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageMinimum {
    pub control_plane: MachineSize,
    pub worker: MachineSize,
}

/// vCPUs and memory.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineSize {
    pub cpu: Cpu,
    pub memory: Memory,
}

/// A file fetched by URL (`http(s)://` or `file://`) and checked by digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub url: String,
    /// Lowercase hex SHA-256 of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskImage {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default)]
    pub format: DiskFormat,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Qcow2,
    Raw,
}

fn check_artifact(field: &str, url: &str, sha: Option<&str>, errs: &mut Vec<FieldError>) {
    if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("file://")) {
        errs.push(FieldError::invalid(
            format!("{field}.url"),
            format!("{url:?}: must be an http://, https:// or file:// URL"),
        ));
    }
    if let Some(sha) = sha
        && (sha.len() != 64
            || !sha
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        errs.push(FieldError::invalid(
            format!("{field}.sha256"),
            "must be 64 lowercase hex digits",
        ));
    }
}

impl Validate for MachineImage {
    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = Vec::new();
        if s.kernel.is_none() && s.disk.is_none() {
            errs.push(FieldError::required("spec.kernel"));
        }
        if s.kernel.is_none() && s.initrd.is_some() {
            errs.push(FieldError::new(
                "spec.initrd",
                FieldErrorKind::Forbidden,
                "an initrd needs spec.kernel (direct kernel boot)",
            ));
        }
        if let Some(k) = &s.kernel {
            check_artifact("spec.kernel", &k.url, k.sha256.as_deref(), &mut errs);
        }
        if let Some(i) = &s.initrd {
            check_artifact("spec.initrd", &i.url, i.sha256.as_deref(), &mut errs);
        }
        if let Some(d) = &s.disk {
            check_artifact("spec.disk", &d.url, d.sha256.as_deref(), &mut errs);
        }
        if let Some(v) = &s.kubernetes_version
            && let Err(e) = v.parse::<KubeVersion>()
        {
            errs.push(FieldError::invalid("spec.kubernetesVersion", e));
        }
        if let Some(m) = &s.minimum {
            for (field, size) in [
                ("spec.minimum.controlPlane", m.control_plane),
                ("spec.minimum.worker", m.worker),
            ] {
                if size.cpu == 0 {
                    errs.push(FieldError::invalid(
                        format!("{field}.cpu"),
                        "must be at least 1",
                    ));
                }
            }
        }
        errs
    }
}
