//! The management API as the reconciler uses it: read a Machine's bootstrap
//! data, write its status, and release its VM finalizer. [`KubePlatform`]
//! talks to the API server; [`fake::FakePlatform`] records what it was
//! asked, for unit tests.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use paddock_api::{Machine, MachineStatus};
use serde_json::json;

/// Why a call to the management API failed.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Fake(String),
}

/// What the reconciler asks of the management API.
#[async_trait]
pub trait Platform: Send + Sync + 'static {
    /// The data of Secret `ns/name`, or `None` if it does not exist (yet).
    async fn secret_data(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, PlatformError>;
    /// Writes the Machine's status.
    async fn write_status(
        &self,
        ns: &str,
        name: &str,
        status: &MachineStatus,
    ) -> Result<(), PlatformError>;
    /// Removes [`paddock_api::machine::VM_FINALIZER`] from the Machine, if it is still at the
    /// resourceVersion read (else the next pass looks again).
    async fn release(&self, m: &Machine) -> Result<(), PlatformError>;
}

/// The API server, through a kube client.
pub struct KubePlatform(pub kube::Client);

#[async_trait]
impl Platform for KubePlatform {
    async fn secret_data(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, PlatformError> {
        let api: Api<Secret> = Api::namespaced(self.0.clone(), ns);
        Ok(api.get_opt(name).await?.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        }))
    }

    async fn write_status(
        &self,
        ns: &str,
        name: &str,
        status: &MachineStatus,
    ) -> Result<(), PlatformError> {
        let api: Api<Machine> = Api::namespaced(self.0.clone(), ns);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
        Ok(())
    }

    async fn release(&self, m: &Machine) -> Result<(), PlatformError> {
        let api: Api<Machine> = Api::namespaced(self.0.clone(), &m.namespace().unwrap_or_default());
        let patch = paddock_api::machine::release_patch(m);
        match api
            .patch(
                &m.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Already gone: released before.
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

pub mod fake {
    //! A fake management API: Secrets put in by the test, status writes and
    //! releases recorded. It is a fake: no server is involved.

    use std::collections::BTreeMap;
    use std::sync::{Mutex, MutexGuard};

    use async_trait::async_trait;
    use kube::ResourceExt;
    use paddock_api::{Machine, MachineStatus};

    use super::{Platform, PlatformError};

    #[derive(Debug, Default)]
    struct State {
        secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
        statuses: BTreeMap<(String, String), MachineStatus>,
        released: Vec<(String, String)>,
    }

    /// The fake management API.
    #[derive(Debug, Default)]
    pub struct FakePlatform {
        state: Mutex<State>,
    }

    impl FakePlatform {
        fn lock(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }
        /// Makes Secret `ns/name` exist with `data`.
        pub fn put_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
            let data = data
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect();
            self.lock()
                .secrets
                .insert((ns.to_owned(), name.to_owned()), data);
        }
        /// The status last written for Machine `ns/name`.
        pub fn status(&self, ns: &str, name: &str) -> Option<MachineStatus> {
            self.lock()
                .statuses
                .get(&(ns.to_owned(), name.to_owned()))
                .cloned()
        }
        /// The Machines released, in order.
        pub fn released(&self) -> Vec<(String, String)> {
            self.lock().released.clone()
        }
    }

    #[async_trait]
    impl Platform for FakePlatform {
        async fn secret_data(
            &self,
            ns: &str,
            name: &str,
        ) -> Result<Option<BTreeMap<String, Vec<u8>>>, PlatformError> {
            Ok(self
                .lock()
                .secrets
                .get(&(ns.to_owned(), name.to_owned()))
                .cloned())
        }
        async fn write_status(
            &self,
            ns: &str,
            name: &str,
            status: &MachineStatus,
        ) -> Result<(), PlatformError> {
            self.lock()
                .statuses
                .insert((ns.to_owned(), name.to_owned()), status.clone());
            Ok(())
        }
        async fn release(&self, m: &Machine) -> Result<(), PlatformError> {
            self.lock()
                .released
                .push((m.namespace().unwrap_or_default(), m.name_any()));
            Ok(())
        }
    }
}
