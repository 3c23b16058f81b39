//! The strategy's control-plane imports (`instances`, `clones`, `traffic`, `metrics`)
//! implemented over the async [`ControlPlane`]
//! client: plugin calls run on a blocking thread, so each import blocks on the tokio
//! runtime's handle for one request.

use std::sync::Arc;

use serde_json::Value;

use crate::client::{self, ControlPlane};
use crate::metrics_provider::MetricQueries;
use crate::runtime::scope::{
    BackendWeight, Counters, CpError, Health, InstanceInfo, InstanceStatus, RuntimeStatus,
    StrategyHost,
};

/// A [`StrategyHost`] that forwards to a [`ControlPlane`].
pub struct Bridge {
    cp: Arc<dyn ControlPlane>,
    handle: tokio::runtime::Handle,
    queries: Arc<MetricQueries>,
    /// Where intents are recorded before mutating calls: the store, the rollout's key
    /// and the strategy's label.
    intents: Option<(Arc<crate::store::Store>, String, String)>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").finish_non_exhaustive()
    }
}

impl Bridge {
    /// Forward to `cp`, blocking on `handle` (call only from a blocking thread).
    pub fn new(cp: Arc<dyn ControlPlane>, handle: tokio::runtime::Handle) -> Self {
        Bridge {
            cp,
            handle,
            queries: Arc::default(),
            intents: None,
        }
    }

    /// Record every mutating call's intent in `store` before it is sent, as made by
    /// `plugin` (its `name@version`) for the rollout `rollout_key` (an instance id or a
    /// group key): see [`StrategyHost::intend`].
    pub fn with_intents(
        mut self,
        store: Arc<crate::store::Store>,
        rollout_key: &str,
        plugin: String,
    ) -> Self {
        self.intents = Some((store, rollout_key.to_owned(), plugin));
        self
    }

    /// Answer `metrics.query` with these named queries (policy's `[metrics.queries]`);
    /// without them every query is `not-found`.
    pub fn with_metric_queries(mut self, queries: Arc<MetricQueries>) -> Self {
        self.queries = queries;
        self
    }

    fn block<T>(&self, f: impl Future<Output = client::Result<T>>) -> Result<T, CpError> {
        self.handle.block_on(f).map_err(to_cp_error)
    }

    /// Refuse an extension the control plane does not offer, without sending anything
    /// (a control plane declared as the seed API never sees a route it lacks).
    fn offered(
        &self,
        call: &str,
        has: impl FnOnce(&client::Capabilities) -> bool,
    ) -> Result<(), CpError> {
        let capabilities = self.block(self.cp.capabilities())?;
        if has(&capabilities) {
            Ok(())
        } else {
            Err(CpError::Unavailable(format!(
                "{call}: this control plane does not offer it"
            )))
        }
    }
}

fn to_cp_error(e: client::Error) -> CpError {
    let text = e.to_string();
    if e.is_not_found() {
        return CpError::NotFound(text);
    }
    match e {
        client::Error::Unreachable { .. } | client::Error::Timeout { .. } => {
            CpError::Unavailable(text)
        }
        client::Error::Unsupported { .. } => CpError::Unavailable(text),
        // A 429 asks for time; it is no verdict on the arguments.
        client::Error::Status { status, .. }
            if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS =>
        {
            CpError::Invalid(text)
        }
        _ => CpError::Other(text),
    }
}

fn status(s: client::InstanceStatus) -> InstanceStatus {
    match s {
        client::InstanceStatus::Created => InstanceStatus::Created,
        client::InstanceStatus::Running => InstanceStatus::Running,
        client::InstanceStatus::Stopped => InstanceStatus::Stopped,
        // The contract's words are neutral; DRaaS's are mapped here.
        client::InstanceStatus::Error => InstanceStatus::Failed,
        client::InstanceStatus::ConfigurationChanged => InstanceStatus::Outdated,
    }
}

fn parse_config(text: &str) -> Result<Value, CpError> {
    serde_json::from_str(text)
        .map_err(|e| CpError::Invalid(format!("configuration is not valid JSON: {e}")))
}

impl StrategyHost for Bridge {
    fn intend(
        &self,
        call: &str,
        target: &str,
        configuration: Option<&str>,
    ) -> Result<Option<i64>, CpError> {
        let Some((store, rollout_key, plugin)) = &self.intents else {
            return Ok(None);
        };
        let digest = configuration.map(|c| match serde_json::from_str::<Value>(c) {
            Ok(value) => super::config_digest(&value),
            Err(_) => super::config_digest(&Value::String(c.to_owned())),
        });
        store
            .record_intent(rollout_key, plugin, call, target, digest.as_deref())
            .map(Some)
            .map_err(|e| {
                CpError::Unavailable(format!(
                    "the call was not sent: its intent could not be recorded ({})",
                    crate::error_chain(&e)
                ))
            })
    }

    fn settle(&self, token: i64, outcome: &crate::runtime::scope::CallOutcome) {
        let Some((store, _, _)) = &self.intents else {
            return;
        };
        let text = match outcome {
            crate::runtime::scope::CallOutcome::Ok => "ok".to_owned(),
            crate::runtime::scope::CallOutcome::Failed(why) => format!("failed: {why}"),
            other => format!("{other:?}"),
        };
        // Best effort: without it the call is reported in doubt after a crash, which
        // is what it would be anyway.
        if let Err(e) = store.settle_intent(token, &text) {
            tracing::warn!(error = %crate::error_chain(&e), "could not record a call's outcome ahead of the audit");
        }
    }

    fn get_instance(&self, id: &str) -> Result<InstanceInfo, CpError> {
        let i = self.block(self.cp.get_instance(id))?;
        Ok(InstanceInfo {
            id: i.id,
            name: i.name,
            status: status(i.status),
            platform: i.platform_type.as_str().to_owned(),
            labels: i.metadata.into_iter().collect(),
        })
    }

    fn get_runtime_status(&self, id: &str) -> Result<RuntimeStatus, CpError> {
        let r = self.block(self.cp.runtime_status(id))?;
        Ok(RuntimeStatus {
            status: status(r.status),
            details: r.runtime_metadata.to_string(),
        })
    }

    fn get_desired_configuration(&self, id: &str) -> Result<String, CpError> {
        Ok(self.block(self.cp.desired_configuration(id))?.to_string())
    }

    fn start(&self, id: &str, configuration: Option<&str>) -> Result<(), CpError> {
        let config = configuration.map(parse_config).transpose()?;
        self.block(self.cp.start(id, config.as_ref()))
    }

    fn stop(&self, id: &str) -> Result<(), CpError> {
        self.block(self.cp.stop(id))
    }

    fn restart(&self, id: &str) -> Result<(), CpError> {
        self.block(self.cp.restart(id))
    }

    fn probe_health(&self, id: &str) -> Result<Health, CpError> {
        self.offered("probe-health", |c| c.health)?;
        let h = self.block(self.cp.probe_health(id))?;
        Ok(Health {
            healthy: h.healthy,
            detail: h.detail.unwrap_or_default(),
        })
    }

    fn clone_instance(&self, id: &str, configuration: &str) -> Result<String, CpError> {
        self.offered("clone-instance", |c| c.clone_instance)?;
        let config = parse_config(configuration)?;
        let request = serde_json::json!({ "configuration": config });
        Ok(self.block(self.cp.clone_instance(id, &request))?.id)
    }

    fn delete_clone(&self, id: &str) -> Result<(), CpError> {
        self.block(self.cp.delete_clone(id))
    }

    fn set_traffic_weights(
        &self,
        endpoint: &str,
        weights: &[BackendWeight],
    ) -> Result<(), CpError> {
        self.offered("set-traffic-weights", |c| c.traffic_weights)?;
        let backends: Vec<client::BackendWeight> = weights
            .iter()
            .map(|w| client::BackendWeight {
                instance_id: w.instance_id.clone(),
                weight: w.weight,
            })
            .collect();
        self.block(self.cp.set_traffic_weights(endpoint, &backends))
    }

    fn get_counters(&self, id: &str) -> Result<Counters, CpError> {
        self.offered("get-counters", |c| c.metrics)?;
        let m = self.block(self.cp.metrics(id))?;
        Ok(Counters {
            requests: m.requests,
            errors: m.errors,
        })
    }

    /// The named query filled in with the instance's id, name and labels (read from the
    /// control plane now, so a relabelled instance is queried by its new labels) and run
    /// on the configured provider. An unknown name is `not-found` before anything is
    /// read or sent.
    fn query(&self, name: &str, id: &str) -> Result<Option<f64>, CpError> {
        self.queries.template(name)?;
        let instance = self.get_instance(id)?;
        self.handle.block_on(self.queries.evaluate(name, &instance))
    }
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    fn status(status: StatusCode) -> client::Error {
        client::Error::Status {
            call: "POST /api/server/instances/a/stop".into(),
            status,
            body: String::new(),
            retry_after: None,
        }
    }

    /// A 429 is the control plane asking for time, not refusing the arguments: a strategy
    /// must see a failure it may retry (`other`, as for a 5xx), or a rate limit would give
    /// up a revision for good.
    #[test]
    fn too_many_requests_is_not_invalid() {
        assert!(matches!(
            to_cp_error(status(StatusCode::TOO_MANY_REQUESTS)),
            CpError::Other(_)
        ));
        assert!(matches!(
            to_cp_error(status(StatusCode::SERVICE_UNAVAILABLE)),
            CpError::Other(_)
        ));
        assert!(matches!(
            to_cp_error(status(StatusCode::BAD_REQUEST)),
            CpError::Invalid(_)
        ));
    }

    /// The contract's status words are control-plane neutral; DRaaS's are mapped here,
    /// one to one.
    #[test]
    fn draas_statuses_map_to_the_contracts_words() {
        use client::InstanceStatus as Draas;
        let mapped = [
            Draas::Created,
            Draas::Running,
            Draas::Stopped,
            Draas::Error,
            Draas::ConfigurationChanged,
        ]
        .map(super::status);
        assert_eq!(
            mapped,
            [
                InstanceStatus::Created,
                InstanceStatus::Running,
                InstanceStatus::Stopped,
                InstanceStatus::Failed,
                InstanceStatus::Outdated,
            ]
        );
    }

    /// No DRaaS (or Drasi) vocabulary in the contract plugins are written against: the
    /// host maps (the frozen 0.1.0 contract keeps the words it shipped with).
    #[test]
    fn the_contract_speaks_no_control_plane_vocabulary() {
        let wit = include_str!("../../../wit/setpoint.wit").to_lowercase();
        for word in [
            "draas",
            "drasi",
            "configuration-changed",
            "configurationchanged",
            "/api/",
        ] {
            assert!(
                !wit.contains(word),
                "wit/setpoint.wit says `{word}`: the contract is control-plane neutral; map it in the host"
            );
        }
    }
}
