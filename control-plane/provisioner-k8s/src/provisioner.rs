//! [`K8sProvisioner`]: the requests behind `apply`, `observe`, `list` and `delete`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Pod, ResourceQuota, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource};
use rand::RngCore;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_provisioner::{
    ClusterId, ClusterObservation, ClusterPhase, ClusterSpec, ProvisionError, Provisioner,
};

use crate::config::{ConfigError, Connection, K8sConfig};
use crate::manifest::{self, REST_PORT, TOKEN_KEY};
use crate::names::{
    self, ClusterNames, FIELD_MANAGER, LABEL_APP, LABEL_ORG, LABEL_RUN, all_roots_selector,
    pods_selector, roots_selector,
};
use crate::status::{self, PodRecord, Seen, current_root, generation_of, label};

/// A failed request, with what was being done to which object.
#[derive(Debug, thiserror::Error)]
#[error("{action} {what}: {source}")]
pub struct ApiError {
    pub action: &'static str,
    pub what: String,
    #[source]
    pub source: kube::Error,
}

fn api_error(action: &'static str, what: impl Into<String>, source: kube::Error) -> ProvisionError {
    let what = what.into();
    match &source {
        // The API server refused the object itself: our manifest or the spec is wrong,
        // and sending it again will not help.
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            ProvisionError::InvalidSpec(format!("{action} {what}: {}", s.message))
        }
        kube::Error::Api(s) if s.code == 403 && s.message.contains("exceeded quota") => {
            ProvisionError::Insufficient(format!("{action} {what}: {}", s.message))
        }
        _ => ProvisionError::other(ApiError {
            action,
            what,
            source,
        }),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub struct K8sProvisioner {
    client: Client,
    config: K8sConfig,
}

impl K8sProvisioner {
    /// Connects as `config.connection` says. No request is made until the first call.
    pub async fn connect(config: K8sConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        // kube's TLS setup uses rustls' process-wide provider, which rustls cannot pick by
        // itself when a binary links several. `Err` carries the provider somebody already
        // installed, which serves just as well.
        let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let connect = |e: &dyn std::fmt::Display| ConfigError::Connect(format!("{e}"));
        let kube_config = match &config.connection {
            Connection::Infer => kube::Config::infer().await.map_err(|e| connect(&e))?,
            Connection::InCluster => kube::Config::incluster().map_err(|e| connect(&e))?,
            Connection::Kubeconfig { path, context } => {
                let options = KubeConfigOptions {
                    context: context.clone(),
                    ..Default::default()
                };
                match path {
                    Some(p) => {
                        let file = Kubeconfig::read_from(p).map_err(|e| {
                            ConfigError::Connect(format!("reading {}: {e}", p.display()))
                        })?;
                        kube::Config::from_custom_kubeconfig(file, &options)
                            .await
                            .map_err(|e| connect(&e))?
                    }
                    None => kube::Config::from_kubeconfig(&options)
                        .await
                        .map_err(|e| connect(&e))?,
                }
            }
        };
        let client = Client::try_from(kube_config).map_err(|e| connect(&e))?;
        Self::with_client(client, config)
    }

    /// With a client built elsewhere (the tests pass one over kube's mock service).
    pub fn with_client(client: Client, config: K8sConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(K8sProvisioner { client, config })
    }

    pub fn config(&self) -> &K8sConfig {
        &self.config
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn apply_object<K>(
        &self,
        api: &Api<K>,
        name: &str,
        object: &K,
    ) -> Result<K, ProvisionError>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug,
        <K as Resource>::DynamicType: Default,
    {
        // force: these objects belong to the control plane; a hand edit is overwritten.
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(name, &params, &Patch::Apply(object))
            .await
            .map_err(|e| {
                api_error(
                    "applying",
                    format!("{} {name}", K::kind(&Default::default())),
                    e,
                )
            })
    }

    async fn list_roots(
        &self,
        namespace: &str,
        id: &ClusterId,
    ) -> Result<Vec<ConfigMap>, ProvisionError> {
        let lp = ListParams::default().labels(&roots_selector(id));
        let roots = self.api::<ConfigMap>(namespace).list(&lp).await;
        Ok(roots
            .map_err(|e| api_error("listing", format!("clusters of {id}"), e))?
            .items)
    }

    async fn list_pods(
        &self,
        namespace: &str,
        id: &ClusterId,
    ) -> Result<(Vec<Pod>, String), ProvisionError> {
        let lp = ListParams::default().labels(&pods_selector(id));
        let list = self.api::<Pod>(namespace).list(&lp).await;
        let list = list.map_err(|e| api_error("listing", format!("pods of {id}"), e))?;
        Ok((
            list.items,
            list.metadata.resource_version.unwrap_or_default(),
        ))
    }

    async fn read_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, ProvisionError> {
        let secret = self.api::<Secret>(namespace).get_opt(name).await;
        let secret =
            secret.map_err(|e| api_error("reading", format!("secret {namespace}/{name}"), e))?;
        Ok(secret
            .and_then(|s| s.data)
            .and_then(|d| d.get(TOKEN_KEY).cloned())
            .and_then(|b| String::from_utf8(b.0).ok())
            .filter(|t| !t.is_empty()))
    }

    /// Warning events about the objects of one cluster (each is named after the cluster,
    /// or starts with `{cluster}-`), oldest first.
    async fn warnings(&self, namespace: &str, cluster: &str) -> Result<Vec<Event>, ProvisionError> {
        let lp = ListParams::default().fields("type=Warning");
        let events = self.api::<Event>(namespace).list(&lp).await;
        let events = events
            .map_err(|e| api_error("listing", format!("events of {namespace}/{cluster}"), e))?;
        let mut mine: Vec<Event> = events
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref().is_some_and(|n| {
                    n.strip_prefix(cluster)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
                })
            })
            .collect();
        mine.sort_by_key(status::event_time);
        Ok(mine)
    }

    async fn delete_root(&self, namespace: &str, name: &str) -> Result<(), ProvisionError> {
        match self
            .api::<ConfigMap>(namespace)
            .delete(name, &DeleteParams::foreground())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(
                "deleting",
                format!("cluster {namespace}/{name}"),
                e,
            )),
        }
    }

    fn rest_url(&self, namespace: &str, root: &ConfigMap) -> Option<String> {
        let cluster = root.metadata.name.as_deref()?;
        let host = format!(
            "{cluster}-jm.{namespace}.svc.{}",
            self.config.cluster_domain
        );
        Some(format!("http://{host}:{REST_PORT}"))
    }

    /// Waits until every pod of the application is gone, recording what each pod last
    /// showed. The watch starts at the list's resource version, so no change is missed.
    async fn await_pods_gone(
        &self,
        namespace: &str,
        id: &ClusterId,
        pods: Vec<Pod>,
        mut version: String,
    ) -> Result<BTreeMap<String, PodRecord>, ProvisionError> {
        let mut records: BTreeMap<String, PodRecord> = pods
            .into_iter()
            .filter_map(|p| {
                Some((
                    p.metadata.name.clone()?,
                    PodRecord {
                        pod: p,
                        gone_at: None,
                    },
                ))
            })
            .collect();
        let deadline =
            Instant::now() + Duration::from_secs(u64::from(self.config.delete_timeout_s));
        let selector = pods_selector(id);
        let api = self.api::<Pod>(namespace);
        let live =
            |r: &BTreeMap<String, PodRecord>| r.values().filter(|p| p.gone_at.is_none()).count();
        while live(&records) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProvisionError::other(format!(
                    "cluster {id}: {} pods still terminating after {} s (delete again to keep waiting)",
                    live(&records),
                    self.config.delete_timeout_s
                )));
            }
            let secs = u32::try_from(left.as_secs()).unwrap_or(u32::MAX).max(1);
            let wp = WatchParams::default().labels(&selector).timeout(secs);
            let stream = api.watch(&wp, &version).await;
            let mut stream = stream
                .map_err(|e| api_error("watching", format!("pods of {id}"), e))?
                .boxed();
            let mut expired = false;
            while let Some(event) = stream
                .try_next()
                .await
                .map_err(|e| api_error("watching", format!("pods of {id}"), e))?
            {
                match event {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                        version = p.metadata.resource_version.clone().unwrap_or(version);
                        if let Some(name) = p.metadata.name.clone() {
                            records.insert(
                                name,
                                PodRecord {
                                    pod: p,
                                    gone_at: None,
                                },
                            );
                        }
                    }
                    WatchEvent::Deleted(p) => {
                        version = p.metadata.resource_version.clone().unwrap_or(version);
                        if let Some(name) = p.metadata.name.clone() {
                            records.insert(
                                name,
                                PodRecord {
                                    pod: p,
                                    gone_at: Some(Utc::now()),
                                },
                            );
                        }
                    }
                    WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                    // 410 Gone: the version is too old to resume from; list again.
                    WatchEvent::Error(s) if s.code == 410 => {
                        expired = true;
                        break;
                    }
                    WatchEvent::Error(s) => {
                        return Err(api_error(
                            "watching",
                            format!("pods of {id}"),
                            kube::Error::Api(s),
                        ));
                    }
                }
                if live(&records) == 0 {
                    return Ok(records);
                }
            }
            // The watch ended (server timeout or 410): a list shows which pods went unseen.
            let (now_listed, listed_version) = self.list_pods(namespace, id).await?;
            let listed: BTreeSet<String> = now_listed
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            let seen_gone_at = Utc::now();
            for (name, record) in records.iter_mut() {
                if record.gone_at.is_none() && !listed.contains(name) {
                    record.gone_at = Some(seen_gone_at);
                }
            }
            for p in now_listed {
                if let Some(name) = p.metadata.name.clone() {
                    records.insert(
                        name,
                        PodRecord {
                            pod: p,
                            gone_at: None,
                        },
                    );
                }
            }
            version = listed_version;
            tracing::debug!(cluster = %id, expired, live = live(&records), "pod watch ended; listed again");
        }
        Ok(records)
    }
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl Provisioner for K8sProvisioner {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn apply(&self, spec: &ClusterSpec) -> Result<ClusterObservation, ProvisionError> {
        manifest::validate_spec(spec)?;
        let names = ClusterNames::new(&self.config.namespace_prefix, spec)?;
        let ns = names.namespace.as_str();

        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        self.apply_object(
            &namespaces,
            ns,
            &manifest::namespace(&names, &spec.id.org_id),
        )
        .await?;
        if let Some(quota) = manifest::resource_quota(&names, spec) {
            self.apply_object(&self.api::<ResourceQuota>(ns), manifest::QUOTA_NAME, &quota)
                .await?;
        }

        // Generations only move forward: a stale spec must not replace a newer cluster.
        let roots = self.list_roots(ns, &spec.id).await?;
        for r in roots
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_none())
        {
            let generation = generation_of(&r.metadata).unwrap_or(0);
            let run = label(&r.metadata, LABEL_RUN).unwrap_or_default();
            if generation > spec.generation || (generation == spec.generation && run != spec.run_id)
            {
                return Err(ProvisionError::InvalidSpec(format!(
                    "cluster {}: generation {generation} of run {run} exists; refusing generation {} of run {}",
                    spec.id, spec.generation, spec.run_id
                )));
            }
        }

        let root = self
            .apply_object(
                &self.api::<ConfigMap>(ns),
                &names.cluster,
                &manifest::root(spec, &names),
            )
            .await?;
        let uid = root.metadata.uid.clone().ok_or_else(|| {
            ProvisionError::other(format!(
                "the API server returned ConfigMap {ns}/{} without a uid",
                names.cluster
            ))
        })?;
        // The token outlives re-applies of one generation: the running engine read it at start.
        let token = match self.read_token(ns, &names.cluster).await? {
            Some(t) => t,
            None => new_token(),
        };
        let m = manifest::cluster(&self.config, spec, &names, &uid, &token);
        self.apply_object(&self.api::<Secret>(ns), &names.cluster, &m.secret)
            .await?;
        self.apply_object(
            &self.api::<NetworkPolicy>(ns),
            &names.cluster,
            &m.network_policy,
        )
        .await?;
        self.apply_object(
            &self.api::<Service>(ns),
            &names.jobmanager,
            &m.jobmanager_service,
        )
        .await?;
        self.apply_object(
            &self.api::<Service>(ns),
            &names.taskmanager,
            &m.taskmanager_service,
        )
        .await?;
        self.apply_object(
            &self.api::<Deployment>(ns),
            &names.jobmanager,
            &m.jobmanager,
        )
        .await?;
        self.apply_object(
            &self.api::<StatefulSet>(ns),
            &names.taskmanager,
            &m.taskmanagers,
        )
        .await?;

        for old in roots
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_none())
        {
            if generation_of(&old.metadata) != Some(spec.generation)
                && let Some(name) = old.metadata.name.as_deref()
            {
                self.delete_root(ns, name).await?;
            }
        }
        self.observe(&spec.id).await
    }

    async fn observe(&self, id: &ClusterId) -> Result<ClusterObservation, ProvisionError> {
        let ns = names::namespace_name(&self.config.namespace_prefix, &id.org_id)?;
        let roots = self.list_roots(&ns, id).await?;
        let (pods, _) = self.list_pods(&ns, id).await?;
        let records: Vec<PodRecord> = pods
            .into_iter()
            .map(|pod| PodRecord { pod, gone_at: None })
            .collect();
        let current = current_root(&roots);
        let auth_token = match current.and_then(|r| r.metadata.name.as_deref()) {
            Some(name) => self.read_token(&ns, name).await?,
            None => None,
        };
        let mut seen = Seen {
            id,
            roots: &roots,
            pods: &records,
            events: &[],
            auth_token,
            rest_url: current.and_then(|r| self.rest_url(&ns, r)),
            max_restarts: self.config.max_container_restarts,
        };
        let obs = status::observation(&seen);
        // Events explain a cluster that is not running (unschedulable, quota, image pulls).
        let troubled = matches!(obs.phase, ClusterPhase::Starting | ClusterPhase::Failed);
        if let (true, Some(name)) = (troubled, current.and_then(|r| r.metadata.name.as_deref())) {
            let events = self.warnings(&ns, name).await?;
            seen.events = &events;
            return Ok(status::observation(&seen));
        }
        Ok(obs)
    }

    async fn list(&self) -> Result<Vec<ClusterObservation>, ProvisionError> {
        let all: Api<ConfigMap> = Api::all(self.client.clone());
        let roots = all
            .list(&ListParams::default().labels(&all_roots_selector()))
            .await;
        let roots = roots
            .map_err(|e| api_error("listing", "clusters", e))?
            .items;
        let ids: BTreeSet<ClusterId> = roots
            .iter()
            .filter(|r| {
                r.metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&self.config.namespace_prefix))
            })
            .filter_map(|r| {
                Some(ClusterId {
                    org_id: label(&r.metadata, LABEL_ORG)?.to_owned(),
                    application_id: label(&r.metadata, LABEL_APP)?.to_owned(),
                })
            })
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.observe(&id).await?);
        }
        Ok(out)
    }

    async fn delete(&self, id: &ClusterId) -> Result<ClusterObservation, ProvisionError> {
        let ns = names::namespace_name(&self.config.namespace_prefix, &id.org_id)?;
        let roots = self.list_roots(&ns, id).await?;
        let (pods, version) = self.list_pods(&ns, id).await?;
        if roots.is_empty() && pods.is_empty() {
            return Ok(ClusterObservation::absent(id.clone()));
        }
        // Foreground: the API server removes the pods before the root, so the root stays
        // visible (with a deletion timestamp) while the cluster is going away.
        for r in roots
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_none())
        {
            if let Some(name) = r.metadata.name.as_deref() {
                self.delete_root(&ns, name).await?;
            }
        }
        let records = self.await_pods_gone(&ns, id, pods, version).await?;
        let records: Vec<PodRecord> = records.into_values().collect();
        let mut obs = status::observation(&Seen {
            id,
            roots: &[],
            pods: &records,
            events: &[],
            auth_token: None,
            rest_url: None,
            max_restarts: self.config.max_container_restarts,
        });
        if records.is_empty() {
            let newest = roots.iter().max_by_key(|r| generation_of(&r.metadata));
            obs.phase = ClusterPhase::Terminated;
            obs.run_id = newest
                .and_then(|r| label(&r.metadata, LABEL_RUN))
                .map(str::to_owned);
            obs.generation = newest.and_then(|r| generation_of(&r.metadata));
        }
        Ok(obs)
    }
}
