//! The verbs of the Kubernetes API over the store: get, list, create,
//! update, patch, delete and deletecollection, with optimistic concurrency,
//! generations, finalizers, dry runs and field validation. Used by the HTTP
//! layer and by the in-server controllers alike.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use paddock_api::{FieldError, FieldErrorKind};
use paddock_store::{DynStore, Fence, KeyValue, Precondition, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cache::{Entry, WatchCache};
use crate::error::{ApiError, ApiResult};
use crate::object::{self, meta_mut};
use crate::resources::{self, Resource};
use crate::selector::{FieldSelector, LabelSelector};

const CONFLICT_MSG: &str =
    "the object has been modified; please apply your changes to the latest version and try again";
const MAX_RETRIES: usize = 8;

/// The store plus the API's rules.
#[derive(Clone)]
pub struct Api {
    pub store: DynStore,
    /// Serves lists, `resourceVersion=0` gets and watches when present.
    pub cache: Option<Arc<WatchCache>>,
    pub bookmark_every: Duration,
    /// Every write through this handle holds only within this leader's
    /// term ([`crate::leader`]): the writes of the loops that run on the
    /// leader alone.
    pub fence: Option<Fence>,
}

/// Decides whether a write may store `new` in place of `old` (none for a
/// create): authorization on the result, not on the shape of the request.
pub type Admit = std::sync::Arc<dyn Fn(Option<&Value>, &Value) -> ApiResult<()> + Send + Sync>;

/// What a write may do besides writing.
#[derive(Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    /// What to do with fields the type does not know (`fieldValidation`).
    pub validation: FieldValidation,
    /// Checked on the object as it would be stored, after validation and
    /// before anything is written (also on dry runs).
    pub admit: Option<Admit>,
    /// Who writes, for `managedFields` (`fieldManager`, else the client's
    /// user agent; the server's own writes when unset).
    pub manager: Option<String>,
    /// An apply takes fields from other managers (`force=true`).
    pub force: bool,
    /// Where `FieldValidation::Warn` puts what it found.
    pub warnings: Warnings,
}

/// `fieldValidation`: unknown or duplicated fields are dropped silently,
/// dropped with a warning (the default), or refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// Warnings a write collects for the response's `Warning` headers.
#[derive(Debug, Clone, Default)]
pub struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Warnings {
    pub fn push(&self, w: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(w);
        }
    }

    pub fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// The manager the server's own writes are recorded under.
pub const SERVER_MANAGER: &str = "paddock-apiserver";

/// How a write records ownership in `managedFields`.
enum Ownership {
    /// An ordinary write: its manager takes what it changes.
    Update,
    /// An apply, already decided: these are the entries.
    Applied(Vec<crate::apply::Entry>),
}

impl std::fmt::Debug for WriteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteOptions")
            .field("dry_run", &self.dry_run)
            .field("validation", &self.validation)
            .field("admit", &self.admit.is_some())
            .field("manager", &self.manager)
            .field("force", &self.force)
            .finish()
    }
}

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: status changes are ignored where there is a status subresource.
    Main,
    /// The `/status` subresource: only status changes count.
    Status,
    /// In-server controllers: everything but identity.
    Internal,
}

/// `DeleteOptions`, from the body or the query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    #[serde(default)]
    pub propagation_policy: Option<String>,
    #[serde(default)]
    pub preconditions: Option<Preconditions>,
    #[serde(default)]
    pub dry_run: Vec<String>,
    #[serde(default)]
    pub grace_period_seconds: Option<i64>,
    #[serde(default)]
    pub orphan_dependents: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// What an apply did.
#[derive(Debug)]
pub enum Applied {
    /// There was no object: this one was made (201).
    Created(Value),
    /// The object as it is after the apply.
    Updated(Value),
}

/// What a delete did.
#[derive(Debug)]
pub enum Deleted {
    /// Gone from the store; the last state.
    Gone(Value),
    /// Marked for deletion, waiting for finalizers.
    Pending(Value),
}

/// How to list.
#[derive(Debug, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// `resourceVersion`: unset reads the newest state, `0` any cached one.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`: `NotOlderThan` or `Exact`.
    pub resource_version_match: Option<String>,
}

/// Changes the watch cache may be behind the store before writes wait for it.
pub const CACHE_LAG_LIMIT: u64 = 10_000;

/// Which state a list reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadAt {
    /// The newest: no older than the store's revision when the request came.
    Latest,
    /// Whatever the cache holds.
    Any,
    NotOlderThan(u64),
    /// Exactly this revision, from the store's history.
    Exact(u64),
}

impl ReadAt {
    fn of(opts: &ListOptions) -> ApiResult<Self> {
        let rv = opts.resource_version.as_deref().filter(|v| !v.is_empty());
        let m = opts
            .resource_version_match
            .as_deref()
            .filter(|v| !v.is_empty());
        if opts.continue_token.is_some() {
            if rv.is_some() || m.is_some() {
                return Err(ApiError::BadRequest(
                    "specifying resourceVersion or resourceVersionMatch is not allowed when using continue"
                        .into(),
                ));
            }
            return Ok(Self::Latest);
        }
        match (rv, m) {
            (None, None) => Ok(Self::Latest),
            (None, Some(_)) => Err(ApiError::BadRequest(
                "resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
            )),
            (Some(_), Some(other)) if other != "NotOlderThan" && other != "Exact" => {
                Err(ApiError::BadRequest(format!(
                    "resourceVersionMatch {other:?} is not supported: use NotOlderThan or Exact"
                )))
            }
            (Some("0"), Some("Exact")) => Err(ApiError::BadRequest(
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"".into(),
            )),
            (Some("0"), _) => Ok(Self::Any),
            (Some(v), Some("Exact")) => Ok(Self::Exact(parse_rv(v)?)),
            // Without a match, a limit makes a list at a revision exact (as in Kubernetes).
            (Some(v), None) if opts.limit.is_some() => Ok(Self::Exact(parse_rv(v)?)),
            (Some(v), _) => Ok(Self::NotOlderThan(parse_rv(v)?)),
        }
    }
}

/// A page of a list.
pub struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: String,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// A page of a list as cached entries (the JSON the API serves).
pub struct EntryPage {
    pub items: Vec<Arc<Entry>>,
    pub resource_version: String,
    pub continue_token: Option<String>,
    /// Objects after this page (`remainingItemCount`): known, as in
    /// Kubernetes, only for a paged list without selectors.
    pub remaining: Option<usize>,
}

#[derive(serde::Serialize, Deserialize)]
struct ContinueToken {
    /// Last key returned.
    k: String,
    /// Revision of the first page.
    rv: u64,
}

/// The token for the page after `last`, when there is one.
fn continue_token(
    more: bool,
    limit: Option<usize>,
    last: Option<String>,
    rv: u64,
) -> ApiResult<Option<String>> {
    match (more, last) {
        (true, Some(k)) if limit.is_some() => {
            let tok = serde_json::to_vec(&ContinueToken { k, rv })
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tok),
            ))
        }
        _ => Ok(None),
    }
}

/// One page of a list from a cache snapshot, read as of revision `rv`
/// (the snapshot's objects are those of `rv`), after the key `after`.
fn page_of(
    snap: &crate::cache::Snapshot,
    prefix: &str,
    after: Option<&str>,
    opts: &ListOptions,
    rv: u64,
    unselected: bool,
) -> ApiResult<EntryPage> {
    let (items, more) = snap
        .objects
        .select(prefix, after, &opts.labels, &opts.fields, opts.limit);
    let last = items.last().map(|e| e.key.to_string());
    let remaining = match &last {
        Some(k) if more && unselected => Some(snap.objects.count_after(prefix, k)),
        _ => None,
    };
    Ok(EntryPage {
        continue_token: continue_token(more, opts.limit, last, rv)?,
        items,
        resource_version: rv.to_string(),
        remaining,
    })
}

/// Parses a stored record into an object, with its resourceVersion.
pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("corrupt object {}: {e}", kv.key)))?;
    meta_mut(&mut obj).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(obj)
}

fn encode(obj: &Value) -> ApiResult<Bytes> {
    let stored = object::without_rv(obj);
    serde_json::to_vec(&stored)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

fn store_err(res: &Resource, name: &str) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound(_) => ApiError::NotFound(res.subject(name)),
        StoreError::AlreadyExists(_) => ApiError::AlreadyExists(res.subject(name)),
        StoreError::Conflict { .. } => ApiError::Conflict(res.subject(name), CONFLICT_MSG.into()),
        other => other.into(),
    }
}

fn invalid(res: &Resource, name: &str, errs: Vec<FieldError>) -> ApiError {
    ApiError::Invalid(res.subject(name), errs)
}

fn parse_rv(s: &str) -> ApiResult<u64> {
    s.parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {s:?}")))
}

/// Checks `apiVersion`/`kind` of a body against the resource, and fills them in.
fn check_type(res: &Resource, obj: &mut Value) -> ApiResult<()> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    };
    let want = res.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != want => {
            return Err(ApiError::BadRequest(format!(
                "apiVersion {v:?} does not match the expected {want:?}"
            )));
        }
        _ => {}
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if k != res.kind => {
            return Err(ApiError::BadRequest(format!(
                "kind {k:?} does not match the expected {:?}",
                res.kind
            )));
        }
        _ => {}
    }
    map.insert("apiVersion".into(), json!(want));
    map.insert("kind".into(), json!(res.kind));
    Ok(())
}

/// Kind-specific rules applied on every write.
fn kind_rules(res: &Resource, obj: &mut Value, creating: bool) {
    if res.is("", "namespaces") && creating {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        obj["status"] = json!({"phase": "Active"});
    }
    if res.is("", "secrets")
        && obj
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        obj["type"] = json!("Opaque");
    }
    if res.is("", "secrets")
        && let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    {
        let data = obj
            .as_object_mut()
            .map(|m| m.entry("data").or_insert_with(|| json!({})));
        if let Some(Value::Object(data)) = data {
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
}

impl Api {
    pub fn new(store: DynStore) -> Self {
        Self {
            store,
            cache: None,
            bookmark_every: Duration::from_secs(30),
            fence: None,
        }
    }

    /// This API with every write fenced by `fence`.
    pub fn fenced(&self, fence: Option<Fence>) -> Self {
        Self {
            fence,
            ..self.clone()
        }
    }

    async fn read(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<(KeyValue, Value)> {
        let kv = self
            .store
            .get(&res.key(ns, name))
            .await?
            .ok_or_else(|| ApiError::NotFound(res.subject(name)))?;
        let obj = decode(&kv)?;
        Ok((kv, obj))
    }

    pub async fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        Ok(self.read(res, ns, name).await?.1)
    }

    pub async fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<ListPage> {
        let page = self.list_entries(res, ns, opts).await?;
        Ok(ListPage {
            items: page
                .items
                .iter()
                .map(|e| e.object())
                .collect::<ApiResult<_>>()?,
            resource_version: page.resource_version,
            continue_token: page.continue_token,
            remaining: page.remaining,
        })
    }

    /// A list, as entries: from the cache when it can answer (every read
    /// but an exact revision and the pages after the first), else from the
    /// store at one revision.
    pub async fn list_entries(
        &self,
        res: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<EntryPage> {
        let prefix = res.prefix(ns);
        let token = match &opts.continue_token {
            Some(tok) => {
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(tok)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<ContinueToken>(&b).ok())
                    .ok_or_else(|| ApiError::BadRequest("invalid continue token".into()))?;
                if !raw.k.starts_with(&prefix) {
                    return Err(ApiError::BadRequest(
                        "continue token does not belong to this list".into(),
                    ));
                }
                Some(raw)
            }
            None => None,
        };
        let at = ReadAt::of(opts)?;
        let unselected = opts.labels.is_empty() && opts.fields.is_empty();
        // A later page of a list whose resource has not changed since its
        // first page: the cache holds that same snapshot.
        if let (Some(t), Some(cache)) = (&token, &self.cache)
            && let Some(snap) = cache.snapshot(res)
            && snap.changed_at <= t.rv
            && t.rv <= snap.revision
        {
            return page_of(&snap, &prefix, Some(&t.k), opts, t.rv, unselected);
        }
        if token.is_none()
            && let Some(cache) = &self.cache
        {
            let min = match at {
                // The store's own newest revision, not this process's view
                // of it: another replica may have written since.
                ReadAt::Latest => Some(self.store.current_revision().await?),
                ReadAt::Any => Some(0),
                ReadAt::NotOlderThan(n) => Some(n),
                ReadAt::Exact(_) => None,
            };
            if let Some(min) = min
                && cache.wait_for(min).await
                && let Some(snap) = cache.snapshot(res)
                && snap.revision >= min
            {
                return page_of(&snap, &prefix, None, opts, snap.revision, unselected);
            }
        }
        let current = self.store.current_revision().await?;
        let first_rv = match (&token, at) {
            (Some(t), _) => Some(t.rv),
            (None, ReadAt::Exact(n)) => Some(n),
            (None, ReadAt::NotOlderThan(n)) if n > current => {
                return Err(ApiError::Timeout(format!(
                    "Too large resource version: {n}, current: {current}"
                )));
            }
            (None, _) => None,
        };
        let mut after = token.map(|t| t.k);
        let mut items = Vec::new();
        // Every chunk, and every later page, is read at the first page's revision.
        let mut revision = first_rv;
        let mut more;
        let mut last_key = None;
        let chunk = opts.limit.map_or(1000, |l| l.clamp(1, 1000));
        loop {
            let page = match self
                .store
                .list(&prefix, after.as_deref(), Some(chunk), revision)
                .await
            {
                Err(StoreError::Compacted { .. }) if opts.continue_token.is_some() => {
                    return Err(ApiError::Gone(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter."
                            .into(),
                    ));
                }
                Err(StoreError::FutureRevision { requested, current }) => {
                    return Err(ApiError::Timeout(format!(
                        "Too large resource version: {requested}, current: {current}"
                    )));
                }
                other => other?,
            };
            revision = Some(page.revision);
            more = page.more;
            for kv in &page.items {
                last_key = Some(kv.key.clone());
                let e = Entry::new(res, kv, None)?;
                if e.selected(res, &opts.labels, &opts.fields) {
                    items.push(Arc::new(e));
                }
                if opts.limit.is_some_and(|l| items.len() >= l) {
                    more = more
                        || kv.key != page.items.last().map(|k| k.key.clone()).unwrap_or_default();
                    break;
                }
            }
            if !more || opts.limit.is_some_and(|l| items.len() >= l) {
                break;
            }
            after = last_key.clone();
        }
        let rv = revision.unwrap_or_default();
        let remaining = match &last_key {
            Some(k) if more && unselected && opts.limit.is_some() => {
                Some(self.store.count(&prefix, Some(k), Some(rv)).await?)
            }
            _ => None,
        };
        Ok(EntryPage {
            items,
            resource_version: rv.to_string(),
            continue_token: continue_token(more, opts.limit, last_key, rv)?,
            remaining,
        })
    }

    /// An object as of any recent revision (`resourceVersion=0`): from the
    /// cache when it is synced, else from the store.
    pub async fn get_any(&self, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        if let Some(found) = self
            .cache
            .as_ref()
            .and_then(|c| c.get(res, &res.key(ns, name)))
        {
            return found
                .ok_or_else(|| ApiError::NotFound(res.subject(name)))?
                .object();
        }
        self.get(res, ns, name).await
    }

    async fn check_namespace(&self, ns: &str) -> ApiResult<()> {
        let nsr = resources::find("", "v1", "namespaces")
            .ok_or_else(|| ApiError::Internal("no namespaces".into()))?;
        // From the watch cache when it holds the namespace (as Kubernetes'
        // namespace admission reads an informer): a create is not a store
        // read more.
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.get(nsr, &nsr.key(None, ns)))
            .flatten()
            .and_then(|e| e.object().ok());
        let obj = match cached {
            Some(o) => o,
            None => self.get(nsr, None, ns).await?,
        };
        if object::is_deleting(&obj) {
            return Err(ApiError::Forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    pub async fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        obj: Value,
        opts: WriteOptions,
    ) -> ApiResult<Value> {
        self.create_owned(res, ns, obj, opts, Ownership::Update)
            .await
    }

    async fn create_owned(
        &self,
        res: &Resource,
        ns: Option<&str>,
        mut obj: Value,
        opts: WriteOptions,
        ownership: Ownership,
    ) -> ApiResult<Value> {
        check_type(res, &mut obj)?;
        let meta = meta_mut(&mut obj);
        if res.namespaced {
            let ns = ns.ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{} is namespaced: create it in a namespace",
                    res.plural
                ))
            })?;
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ));
                }
                _ => {}
            }
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let suffix: String = (0..5)
                        .map(|_| {
                            let c = b"bcdfghjklmnpqrstvwxz2456789";
                            c[rand::random_range(0..c.len())] as char
                        })
                        .collect();
                    meta.insert("name".into(), json!(format!("{prefix}{suffix}")));
                }
                _ => {
                    return Err(invalid(
                        res,
                        "",
                        vec![FieldError::required("metadata.name")],
                    ));
                }
            }
        }
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
        ] {
            meta.remove(f);
        }
        let name = object::name(&obj).unwrap_or_default().to_owned();
        if res.namespaced
            && let Some(ns) = ns
        {
            self.check_namespace(ns).await?;
        }
        if res.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        kind_rules(res, &mut obj, true);
        let mut normal = res
            .codec
            .normalize(obj.clone())
            .map_err(|e| invalid(res, &name, e))?;
        check_fields(&obj, &normal, &opts)?;
        self.admit_kind(res, &name, None, &mut normal).await?;
        let m = meta_mut(&mut normal);
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
        m.insert("generation".into(), json!(1));
        if let Some(admit) = &opts.admit {
            admit(None, &normal)?;
        }
        let entries = match ownership {
            Ownership::Applied(entries) => entries,
            Ownership::Update => {
                let mut entries = Vec::new();
                let changes = crate::apply::fieldset::changes(
                    &json!({}),
                    &crate::apply::tracked(res, &normal, false),
                    crate::apply::shape_of(res),
                );
                crate::apply::managed::record_update(
                    &mut entries,
                    &writer(&res.api_version(), &opts, None, &object::now_rfc3339()),
                    &changes,
                );
                entries
            }
        };
        crate::apply::managed::write(&mut normal, &entries);
        if opts.dry_run {
            return Ok(normal);
        }
        self.pace_writes().await;
        let kv = self
            .store
            .put_fenced(
                &res.key(ns, &name),
                encode(&normal)?,
                Precondition::MustNotExist,
                self.fence.as_ref(),
            )
            .await
            .map_err(store_err(res, &name))?;
        // What was stored is `normal`: answer with it, not a decode of its bytes.
        meta_mut(&mut normal).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
        Ok(normal)
    }

    /// Replaces an object (PUT), honouring a resourceVersion in the body.
    pub async fn update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        part: Part,
        opts: WriteOptions,
    ) -> ApiResult<Value> {
        check_type(res, &mut obj)?;
        match object::name(&obj) {
            Some(n) if n != name => {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        let pinned = object::meta_str(&obj, "resourceVersion")
            .map(parse_rv)
            .transpose()?;
        for attempt in 0.. {
            let (kv, old) = self.read(res, ns, name).await?;
            match self
                .write_update(
                    res,
                    ns,
                    name,
                    &kv,
                    &old,
                    obj.clone(),
                    part,
                    opts.clone(),
                    pinned,
                    Ownership::Update,
                )
                .await
            {
                Err(ApiError::Conflict(..)) if pinned.is_none() && attempt < MAX_RETRIES => {
                    continue;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// Applies a patch to the current object and writes it.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch: &Value,
        part: Part,
        opts: WriteOptions,
    ) -> ApiResult<Value> {
        for attempt in 0.. {
            let (kv, old) = self.read(res, ns, name).await?;
            let mut new = old.clone();
            match kind {
                PatchKind::Merge => json_patch::merge(&mut new, patch),
                PatchKind::Strategic => json_patch::merge(&mut new, &strip_directives(patch)),
                PatchKind::Apply => {
                    return Err(ApiError::BadRequest(
                        "an apply patch is applied with Api::apply".into(),
                    ));
                }
                PatchKind::Json => {
                    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                        .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
                    json_patch::patch(&mut new, &ops).map_err(|e| {
                        invalid(
                            res,
                            name,
                            vec![FieldError::invalid(
                                "<patch>",
                                format!("the JSON patch cannot be applied: {e}"),
                            )],
                        )
                    })?;
                }
            }
            // A resourceVersion the patch sets is a precondition; the one we read is not.
            let pinned = match object::meta_str(&new, "resourceVersion") {
                Some(rv) if rv != kv.mod_revision.to_string() => Some(parse_rv(rv)?),
                _ => None,
            };
            if pinned.is_none() {
                meta_mut(&mut new).remove("resourceVersion");
            }
            match self
                .write_update(
                    res,
                    ns,
                    name,
                    &kv,
                    &old,
                    new,
                    part,
                    opts.clone(),
                    pinned,
                    Ownership::Update,
                )
                .await
            {
                Err(ApiError::Conflict(..)) if pinned.is_none() && attempt < MAX_RETRIES => {
                    continue;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// Server-side apply: `config` holds the fields its manager wants, as
    /// they should be; merged by the kind's structure into the object (made
    /// if there is none), with conflicts where another manager set a field
    /// to something else (unless `opts.force`), and the fields the manager
    /// applied before and no longer names removed.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        mut config: Value,
        part: Part,
        opts: WriteOptions,
    ) -> ApiResult<Applied> {
        let manager = opts
            .manager
            .clone()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "PATCH, application/apply-patch+yaml requires the fieldManager parameter"
                        .into(),
                )
            })?;
        if config["apiVersion"].as_str().is_none_or(str::is_empty)
            || config["kind"].as_str().is_none_or(str::is_empty)
        {
            return Err(ApiError::BadRequest(
                "an apply configuration must set apiVersion and kind".into(),
            ));
        }
        check_type(res, &mut config)?;
        match object::name(&config) {
            Some(n) if n != name => {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        let status = part == Part::Status;
        let shape = crate::apply::shape_of(res);
        let av = res.api_version();
        for attempt in 0.. {
            let now = object::now_rfc3339();
            let w = crate::apply::Writer {
                manager: &manager,
                subresource: (status && res.status_subresource).then_some("status"),
                api_version: &av,
                now: &now,
            };
            let (kv, old) = match self.read(res, ns, name).await {
                Err(ApiError::NotFound(_)) if !status => {
                    let mut obj = config.clone();
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                    let fields = crate::apply::fieldset::fields_of(
                        &crate::apply::tracked(res, &obj, false),
                        shape,
                    );
                    let entries = vec![crate::apply::Entry {
                        manager: manager.clone(),
                        operation: crate::apply::Operation::Apply,
                        api_version: av.clone(),
                        time: now.clone(),
                        subresource: None,
                        fields,
                    }];
                    match self
                        .create_owned(res, ns, obj, opts.clone(), Ownership::Applied(entries))
                        .await
                    {
                        Err(ApiError::AlreadyExists(_)) if attempt < MAX_RETRIES => continue,
                        other => return other.map(Applied::Created),
                    }
                }
                other => other?,
            };
            immutable_identity(
                res,
                name,
                &object::meta(&old).cloned().unwrap_or_default(),
                &config,
            )?;
            let applied = crate::apply::managed::apply(
                &crate::apply::managed::read(&old),
                &w,
                &crate::apply::tracked(res, &old, status),
                &crate::apply::tracked(res, &config, status),
                shape,
                opts.force,
            )
            .map_err(|conflicts| {
                ApiError::ApplyConflict(
                    res.subject(name),
                    conflicts
                        .into_iter()
                        .map(|c| (c.manager, c.field))
                        .collect(),
                )
            })?;
            let new = crate::apply::restore_untracked(res, &old, applied.object, status);
            match self
                .write_update(
                    res,
                    ns,
                    name,
                    &kv,
                    &old,
                    new,
                    part,
                    opts.clone(),
                    None,
                    Ownership::Applied(applied.entries),
                )
                .await
            {
                Err(ApiError::Conflict(..)) if attempt < MAX_RETRIES => continue,
                other => return other.map(Applied::Updated),
            }
        }
        unreachable!("the loop returns")
    }

    /// Reads, changes with `f`, and writes back, retrying on conflicts.
    /// `f` returns false to leave the object as it is.
    pub async fn modify(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        f: impl Fn(&mut Value) -> bool,
    ) -> ApiResult<Option<Value>> {
        self.try_modify(res, ns, name, |o| Ok(f(o))).await
    }

    /// [`Api::modify`] with a change that may refuse (its error is returned
    /// and nothing is written).
    pub async fn try_modify(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        f: impl Fn(&mut Value) -> ApiResult<bool>,
    ) -> ApiResult<Option<Value>> {
        for attempt in 0.. {
            let (kv, old) = self.read(res, ns, name).await?;
            let mut new = old.clone();
            if !f(&mut new)? {
                return Ok(None);
            }
            match self
                .write_update(
                    res,
                    ns,
                    name,
                    &kv,
                    &old,
                    new,
                    Part::Internal,
                    WriteOptions::default(),
                    None,
                    Ownership::Update,
                )
                .await
            {
                Err(ApiError::Conflict(..)) if attempt < MAX_RETRIES => continue,
                other => return other.map(Some),
            }
        }
        unreachable!("the loop returns")
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        kv: &KeyValue,
        old: &Value,
        mut new: Value,
        part: Part,
        opts: WriteOptions,
        pinned: Option<u64>,
        ownership: Ownership,
    ) -> ApiResult<Value> {
        if let Some(rv) = pinned
            && rv != kv.mod_revision
        {
            return Err(ApiError::Conflict(res.subject(name), CONFLICT_MSG.into()));
        }
        check_type(res, &mut new)?;
        let input = new.clone();
        match part {
            Part::Status => {
                let status = new.get("status").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            Part::Main if res.status_subresource => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            Part::Main | Part::Internal => {}
        }
        let old_meta = object::meta(old).cloned().unwrap_or_default();
        if part != Part::Internal {
            immutable_identity(res, name, &old_meta, &input)?;
        }
        let m = meta_mut(&mut new);
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
        ] {
            match old_meta.get(f) {
                Some(v) => m.insert(f.into(), v.clone()),
                None => m.remove(f),
            };
        }
        if part != Part::Internal {
            for f in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
                match old_meta.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
        }
        m.remove("resourceVersion");
        kind_rules(res, &mut new, false);
        let mut normal = res
            .codec
            .normalize(new.clone())
            .map_err(|e| invalid(res, name, e))?;
        if part != Part::Internal {
            check_fields(&input, &normal, &opts)?;
        }
        if part == Part::Main {
            self.admit_kind(res, name, Some(old), &mut normal).await?;
        }
        if object::is_deleting(old) {
            let before = object::finalizers(old);
            if object::finalizers(&normal)
                .iter()
                .any(|f| !before.contains(f))
            {
                return Err(invalid(
                    res,
                    name,
                    vec![FieldError::new(
                        "metadata.finalizers",
                        FieldErrorKind::Forbidden,
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        if object::desired_state(&normal) != object::desired_state(old) {
            let g = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut normal).insert("generation".into(), json!(g + 1));
        }
        if let Some(admit) = &opts.admit {
            // Both sides as this server normalizes them: a default added
            // since the object was stored is no change of the writer's.
            let old = res
                .codec
                .normalize(old.clone())
                .unwrap_or_else(|_| old.clone());
            admit(Some(&old), &normal)?;
        }
        let entries = match ownership {
            Ownership::Applied(entries) => entries,
            Ownership::Update => {
                let now = object::now_rfc3339();
                let av = res.api_version();
                let mut entries = crate::apply::managed::read(old);
                let halves: &[bool] = match part {
                    Part::Main => &[false],
                    Part::Status => &[true],
                    Part::Internal if res.status_subresource => &[false, true],
                    Part::Internal => &[false],
                };
                for &status in halves {
                    let changes = crate::apply::fieldset::changes(
                        &crate::apply::tracked(res, old, status),
                        &crate::apply::tracked(res, &normal, status),
                        crate::apply::shape_of(res),
                    );
                    let sub = (status && res.status_subresource).then_some("status");
                    crate::apply::managed::record_update(
                        &mut entries,
                        &writer(&av, &opts, sub, &now),
                        &changes,
                    );
                }
                entries
            }
        };
        crate::apply::managed::write(&mut normal, &entries);
        if normal == object::without_rv(old) {
            return Ok(old.clone());
        }
        if opts.dry_run {
            meta_mut(&mut normal)
                .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
            return Ok(normal);
        }
        let key = res.key(ns, name);
        if object::is_deleting(&normal) && !object::has_finalizers(&normal) {
            self.pace_writes().await;
            let (_, rev) = self
                .store
                .delete_fenced(
                    &key,
                    Precondition::ModRevision(kv.mod_revision),
                    self.fence.as_ref(),
                )
                .await
                .map_err(store_err(res, name))?;
            meta_mut(&mut normal).insert("resourceVersion".into(), json!(rev.to_string()));
            return Ok(normal);
        }
        self.pace_writes().await;
        let kv = self
            .store
            .put_fenced(
                &key,
                encode(&normal)?,
                Precondition::ModRevision(kv.mod_revision),
                self.fence.as_ref(),
            )
            .await
            .map_err(store_err(res, name))?;
        meta_mut(&mut normal).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
        Ok(normal)
    }

    /// Holds a write back while the watch cache is more than
    /// [`CACHE_LAG_LIMIT`] changes behind the store, until it is half that
    /// (or for the cache's fresh-read wait at most): writers that outrun
    /// the one task that feeds every watcher would otherwise leave it
    /// behind the store's history, and it would have to read everything
    /// again while every watcher relists.
    async fn pace_writes(&self) {
        if let Some(cache) = &self.cache {
            let rev = self.store.revision();
            if rev > cache.revision().saturating_add(CACHE_LAG_LIMIT) {
                cache.wait_for(rev - CACHE_LAG_LIMIT / 2).await;
            }
        }
    }

    /// Admission that reads other objects: a Cluster's version and images
    /// follow from the registered MachineImages
    /// ([`paddock_api::version::admit_cluster`]). Checked when a spec is
    /// created or changed, not on a Cluster being deleted, so that
    /// unregistering an image never blocks a cluster's metadata or its
    /// deletion.
    async fn admit_kind(
        &self,
        res: &Resource,
        name: &str,
        old: Option<&Value>,
        normal: &mut Value,
    ) -> ApiResult<()> {
        if !res.is(paddock_api::GROUP, "clusters") || object::is_deleting(normal) {
            return Ok(());
        }
        let old_spec = match old {
            Some(o) => {
                let o: paddock_api::Cluster = serde_json::from_value(o.clone())
                    .map_err(|e| ApiError::Internal(format!("stored Cluster {name}: {e}")))?;
                let new_spec = normal.get("spec");
                if new_spec == Some(&serde_json::to_value(&o.spec).unwrap_or_default()) {
                    return Ok(());
                }
                Some(o.spec)
            }
            None => None,
        };
        let mut c: paddock_api::Cluster = serde_json::from_value(normal.clone())
            .map_err(|e| ApiError::Internal(format!("Cluster {name}: {e}")))?;
        let images_res = resources::find(paddock_api::GROUP, paddock_api::VERSION, "machineimages")
            .ok_or_else(|| ApiError::Internal("MachineImage is not served".into()))?;
        let decode = |v: &[u8]| serde_json::from_slice::<paddock_api::MachineImage>(v).ok();
        // The watch cache's images first (no store read per create: on etcd
        // that is a round trip); only when they do not admit the spec, the
        // store's, exact: an image registered a moment ago counts, without
        // waiting for the cache to catch up with every write before it.
        let cached: Option<Vec<paddock_api::MachineImage>> = self
            .cache
            .as_ref()
            .and_then(|c| c.snapshot(images_res))
            .map(|snap| {
                let any = ListOptions::default();
                let (entries, _) = snap.objects.select(
                    &images_res.prefix(None),
                    None,
                    &any.labels,
                    &any.fields,
                    None,
                );
                entries.iter().filter_map(|e| decode(&e.json)).collect()
            });
        let mut admitted = false;
        if let Some(images) = cached {
            let mut spec = c.spec.clone();
            if paddock_api::version::admit_cluster(&mut spec, old_spec.as_ref(), &images).is_empty()
            {
                c.spec = spec;
                admitted = true;
            }
        }
        if !admitted {
            let images = self
                .store
                .list(&images_res.prefix(None), None, None, None)
                .await?
                .items
                .iter()
                .filter_map(|kv| decode(&kv.value))
                .collect::<Vec<_>>();
            let errs = paddock_api::version::admit_cluster(&mut c.spec, old_spec.as_ref(), &images);
            if !errs.is_empty() {
                return Err(invalid(res, name, errs));
            }
        }
        normal["spec"] = serde_json::to_value(&c.spec)
            .map_err(|e| ApiError::Internal(format!("Cluster {name}: {e}")))?;
        Ok(())
    }

    /// Deletes an object, or marks it for deletion while finalizers hold it.
    pub async fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Deleted> {
        let dry_run = opts.dry_run.iter().any(|d| d == "All");
        let policy = match (opts.propagation_policy.as_deref(), opts.orphan_dependents) {
            (Some(p @ ("Foreground" | "Background" | "Orphan")), _) => p,
            (Some(other), _) => {
                return Err(ApiError::BadRequest(format!(
                    "propagationPolicy {other:?} is not supported: use Foreground, Background or Orphan"
                )));
            }
            (None, Some(true)) => "Orphan",
            (None, _) => "Background",
        };
        for attempt in 0.. {
            let (kv, old) = self.read(res, ns, name).await?;
            if let Some(p) = &opts.preconditions {
                if let Some(uid) = &p.uid
                    && object::uid(&old) != Some(uid.as_str())
                {
                    return Err(ApiError::Conflict(
                        res.subject(name),
                        format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            object::uid(&old).unwrap_or("")
                        ),
                    ));
                }
                if let Some(rv) = &p.resource_version
                    && *rv != kv.mod_revision.to_string()
                {
                    return Err(ApiError::Conflict(
                        res.subject(name),
                        format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                            kv.mod_revision
                        ),
                    ));
                }
            }
            let mut new = old.clone();
            let mut fins = object::finalizers(&new);
            let extra = match policy {
                "Foreground" => Some("foregroundDeletion"),
                "Orphan" => Some("orphan"),
                _ => None,
            };
            if let Some(f) = extra
                && !object::is_deleting(&old)
                && !fins.iter().any(|x| x == f)
            {
                fins.push(f.to_owned());
                object::set_finalizers(&mut new, &fins);
            }
            if !object::has_finalizers(&new) {
                if dry_run {
                    return Ok(Deleted::Gone(old));
                }
                self.pace_writes().await;
                match self
                    .store
                    .delete_fenced(
                        &res.key(ns, name),
                        Precondition::ModRevision(kv.mod_revision),
                        self.fence.as_ref(),
                    )
                    .await
                {
                    Ok(_) => return Ok(Deleted::Gone(old)),
                    Err(StoreError::Conflict { .. }) if attempt < MAX_RETRIES => continue,
                    Err(e) => return Err(store_err(res, name)(e)),
                }
            }
            if object::is_deleting(&old) {
                return Ok(Deleted::Pending(old));
            }
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if res.is("", "namespaces") {
                new["status"] = json!({"phase": "Terminating"});
            }
            if dry_run {
                return Ok(Deleted::Pending(new));
            }
            self.pace_writes().await;
            match self
                .store
                .put_fenced(
                    &res.key(ns, name),
                    encode(&new)?,
                    Precondition::ModRevision(kv.mod_revision),
                    self.fence.as_ref(),
                )
                .await
            {
                Ok(kv) => return Ok(Deleted::Pending(decode(&kv)?)),
                Err(StoreError::Conflict { .. }) if attempt < MAX_RETRIES => continue,
                Err(e) => return Err(store_err(res, name)(e)),
            }
        }
        unreachable!("the loop returns")
    }

    /// Deletes every object a list with `list` would return.
    pub async fn delete_collection(
        &self,
        res: &Resource,
        ns: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> ApiResult<usize> {
        let page = self.list(res, ns, list).await?;
        let mut n = 0;
        for obj in page.items {
            let name = object::name(&obj).unwrap_or_default().to_owned();
            match self.delete(res, object::namespace(&obj), &name, opts).await {
                Ok(_) => n += 1,
                Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// The patch formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    /// Server-side apply ([`Api::apply`], not [`Api::patch`]).
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// A strategic merge patch, read as a merge patch: drops the `$`-directives
/// kubectl adds (`$setElementOrder/...`, `$retainKeys`, `$patch`).
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Who a write is recorded as in `managedFields`.
fn writer<'a>(
    api_version: &'a str,
    opts: &'a WriteOptions,
    subresource: Option<&'a str>,
    now: &'a str,
) -> crate::apply::Writer<'a> {
    crate::apply::Writer {
        manager: opts.manager.as_deref().unwrap_or(SERVER_MANAGER),
        subresource,
        api_version,
        now,
    }
}

/// A write that would change who the object is — its name, namespace or
/// uid — is refused, not quietly undone (left out, they stay as they are).
fn immutable_identity(
    res: &Resource,
    name: &str,
    old_meta: &serde_json::Map<String, Value>,
    input: &Value,
) -> ApiResult<()> {
    let mut errs = Vec::new();
    for f in ["name", "namespace", "uid"] {
        if f == "namespace" && !res.namespaced {
            continue;
        }
        let sent = input
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kept = old_meta.get(f).and_then(Value::as_str).unwrap_or_default();
        if !sent.is_empty() && sent != kept {
            errs.push(FieldError::invalid(
                format!("metadata.{f}"),
                format!("{sent:?}: field is immutable"),
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(invalid(res, name, errs))
    }
}

/// Fields of `input` that its type dropped (`normal` is what was kept),
/// refused or warned about as `opts.validation` says.
fn check_fields(input: &Value, normal: &Value, opts: &WriteOptions) -> ApiResult<()> {
    if opts.validation == FieldValidation::Ignore {
        return Ok(());
    }
    let mut unknown = Vec::new();
    object::unknown_fields(input, normal, "", &mut unknown);
    unknown.retain(|f| {
        !f.starts_with("metadata.resourceVersion") && !f.starts_with("metadata.managedFields")
    });
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if opts.validation == FieldValidation::Warn {
        for w in list {
            opts.warnings.push(w);
        }
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "strict decoding error: {}",
        list.join(", ")
    )))
}
