//! The strategy's control-plane imports (`instances`, `clones`, `traffic`, `metrics`)
//! implemented over the async [`ControlPlane`]
//! client: plugin calls run on a blocking thread, so each import blocks on the tokio
//! runtime's handle for one request.

use std::sync::Arc;

use serde_json::Value;

use crate::client::{self, ControlPlane};
use crate::runtime::scope::{
    BackendWeight, Counters, CpError, Health, InstanceInfo, InstanceStatus, RuntimeStatus,
    StrategyHost,
};

/// A [`StrategyHost`] that forwards to a [`ControlPlane`].
pub struct Bridge {
    cp: Arc<dyn ControlPlane>,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").finish_non_exhaustive()
    }
}

impl Bridge {
    /// Forward to `cp`, blocking on `handle` (call only from a blocking thread).
    pub fn new(cp: Arc<dyn ControlPlane>, handle: tokio::runtime::Handle) -> Self {
        Bridge { cp, handle }
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
        client::Error::Status { status, .. } if status.is_client_error() => CpError::Invalid(text),
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
        self.block(self.cp.delete_instance(id))
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
}
