//! The control-plane client: what the host asks of the control plane that manages its
//! instances, behind the [`ControlPlane`] trait, and [`DraasClient`], its implementation
//! for the DRaaS REST API (`docs/design.md` §5).
//!
//! Start reading at [`ControlPlane`]; an embedder with another control plane implements it
//! and hands the host an `Arc<dyn ControlPlane>`. [`DraasClient::new`] with a
//! [`ClientConfig`] talks to the .NET original or the reference control plane
//! (`examples/controlplane`); [`Error`] says which call failed and how.
//!
//! Routes below are given for the default [`ClientConfig`]: base path `/api` and
//! [`Routes::default`]. Calls marked *extension* are not in the DRaaS seed API; their
//! default implementations return [`Error::Unsupported`], and [`ControlPlane::capabilities`]
//! says which ones a control plane has.

mod draas;
mod error;
mod types;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

pub use draas::{
    ClientConfig, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, DEFAULT_BASE_PATH,
    DEFAULT_MAX_RETRY_AFTER, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRIES, DraasClient, Routes,
    decode_changes_since, decode_feed_page,
};
pub use error::{Error, MAX_BODY_EXCERPT, Result};
pub use types::{
    BackendWeight, Capabilities, ChangeBatch, Health, Instance, InstanceStatus, Labels, Metrics,
    PlatformType, RuntimeInfo, StatusChange, Timestamp,
};

/// A control plane as the host sees it: a list of instances with a desired configuration
/// each, lifecycle calls, and a change feed.
///
/// Object safe; the host holds an `Arc<dyn ControlPlane>`. Implementations must be cheap to
/// call concurrently (the controller calls from several reconciles at once) and should
/// bound every call in time. Return [`Error::NotFound`] for an instance that does not
/// exist: the controller classifies orphaned instances by it.
#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Every instance. DRaaS: `GET /api/server/instances`.
    async fn list_instances(&self) -> Result<Vec<Instance>>;

    /// One instance. DRaaS: `GET /api/server/instances/{id}`.
    async fn get_instance(&self, id: &str) -> Result<Instance>;

    /// The instance's desired configuration, as JSON (for DRaaS
    /// `{host, port, logLevel, sources[], queries[], reactions[]}`).
    /// DRaaS: `GET /api/configuration/instances/{id}`.
    async fn desired_configuration(&self, id: &str) -> Result<Value>;

    /// The last known runtime information. DRaaS: `GET /api/status/{id}/status`.
    async fn runtime_status(&self, id: &str) -> Result<RuntimeInfo>;

    /// Starts the instance, with `configuration` if given (the control plane's desired
    /// configuration otherwise). DRaaS: `POST /api/server/instances/{id}/start` with the
    /// configuration as the optional body.
    async fn start(&self, id: &str, configuration: Option<&Value>) -> Result<()>;

    /// Stops the instance. DRaaS: `POST /api/server/instances/{id}/stop`.
    async fn stop(&self, id: &str) -> Result<()>;

    /// Restarts the instance with its desired configuration.
    /// DRaaS: `POST /api/server/instances/{id}/restart`.
    async fn restart(&self, id: &str) -> Result<()>;

    /// Changes with a sequence number greater than `cursor` (`None`: from the start of what
    /// the control plane retains), waiting up to `wait` for one to arrive when there are
    /// none (long-poll). When [`ChangeBatch::truncated`] is set, changes were lost and the
    /// caller must resync every instance. Continue from [`ChangeBatch::next_cursor`].
    ///
    /// Returns [`Error::FeedUnsupported`] when the control plane has no such feed; the
    /// caller then polls [`changes_since`](Self::changes_since).
    /// DRaaS (reference control plane): `GET /api/status/recent-changes?after={seq}&wait={seconds}`.
    async fn changes_after(&self, cursor: Option<u64>, wait: Duration) -> Result<ChangeBatch>;

    /// The cursor of the newest change, for a follower that is about to list every
    /// instance and needs only what happens after that. `None`: the control plane did
    /// not say. The default reads [`changes_after`](Self::changes_after) from the start
    /// and keeps only its cursor; a control plane that reports its head more cheaply
    /// overrides it.
    async fn feed_head(&self) -> Result<Option<u64>> {
        Ok(self
            .changes_after(None, Duration::ZERO)
            .await?
            .next_cursor())
    }

    /// Changes recorded at or after `since`, the seed API's feed. It cannot tell the
    /// caller that changes were lost (its buffer holds the last 1,000), so the host uses
    /// it only when [`changes_after`](Self::changes_after) is unsupported.
    /// DRaaS: `GET /api/status/recent-changes?since={RFC 3339}`.
    async fn changes_since(&self, since: Timestamp) -> Result<Vec<StatusChange>>;

    /// *Extension.* Creates a new instance from `id`'s record, with `request` (e.g.
    /// `{name, configuration}`) overriding what it gives, and returns it.
    /// Reference control plane: `POST /api/extensions/instances/{id}/clone` (request
    /// `{name?, configuration?, metadata?}`).
    async fn clone_instance(&self, id: &str, request: &Value) -> Result<Instance> {
        let _ = (id, request);
        Err(Error::Unsupported {
            call: "clone_instance".to_owned(),
        })
    }

    /// Deletes an instance that [`clone_instance`](Self::clone_instance) created: the
    /// host deletes nothing else (a strategy's `delete-clone`, and the host's sweep of
    /// clones a rollout left behind). The same name as the contract's call, for the same
    /// thing. *Extension* (in the seed API, but not every control plane lets a host
    /// delete). DRaaS: `DELETE /api/server/instances/{id}`.
    async fn delete_clone(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(Error::Unsupported {
            call: "delete_clone".to_owned(),
        })
    }

    /// *Extension.* Sets the backends of a weighted endpoint, replacing the previous set.
    /// Reference control plane: `PUT /api/extensions/endpoints/{endpoint}` with
    /// `{"backends": [{"instanceId", "weight"}]}`.
    async fn set_traffic_weights(&self, endpoint: &str, backends: &[BackendWeight]) -> Result<()> {
        let _ = (endpoint, backends);
        Err(Error::Unsupported {
            call: "set_traffic_weights".to_owned(),
        })
    }

    /// *Extension.* Asks the control plane to probe the instance's health now.
    /// Reference control plane: `GET /api/extensions/instances/{id}/health`.
    async fn probe_health(&self, id: &str) -> Result<Health> {
        let _ = id;
        Err(Error::Unsupported {
            call: "probe_health".to_owned(),
        })
    }

    /// *Extension.* The instance's request and error counters.
    /// Reference control plane: `GET /api/extensions/instances/{id}/metrics`.
    async fn metrics(&self, id: &str) -> Result<Metrics> {
        let _ = id;
        Err(Error::Unsupported {
            call: "metrics".to_owned(),
        })
    }

    /// *Extension.* What the instance runs now: the configuration it was last started
    /// with while it runs, `None` when it runs nothing. The host judges drift against it;
    /// without it only the host's own applied record is available. [`Error::NotFound`]
    /// means the instance does not exist, never that the control plane lacks the call
    /// (that is [`Error::Unsupported`]).
    /// Reference control plane: `GET /api/extensions/instances/{id}/running-configuration`
    /// (`{"running": bool, "configuration": …}`).
    async fn running_configuration(&self, id: &str) -> Result<Option<Value>> {
        let _ = id;
        Err(Error::Unsupported {
            call: "running_configuration".to_owned(),
        })
    }

    /// *Extension.* What every running instance runs, by id, in one call (a resync reads
    /// it once instead of once per instance). Instances that run nothing are absent.
    /// Reference control plane: `GET /api/extensions/running-configurations`
    /// (`{"configurations": {id: configuration}}`).
    async fn running_configurations(&self) -> Result<std::collections::HashMap<String, Value>> {
        Err(Error::Unsupported {
            call: "running_configurations".to_owned(),
        })
    }

    /// Replaces the instance's desired configuration, whole (what `setpoint rollback`
    /// does). Not an extension: the seed API's
    /// `PATCH /api/configuration/instances/{id}` with the JSON Patch
    /// `[{"op": "replace", "path": "", "value": configuration}]` (RFC 6902: the empty
    /// pointer names the whole document), sent as `application/json-patch+json`. The
    /// default returns [`Error::Unsupported`] only so that other implementations need not
    /// change; [`DraasClient`] implements it.
    async fn set_desired_configuration(&self, id: &str, configuration: &Value) -> Result<()> {
        let _ = (id, configuration);
        Err(Error::Unsupported {
            call: "set_desired_configuration".to_owned(),
        })
    }

    /// Which extensions this control plane offers; the host picks the change feed and the
    /// available strategies by it. The default says none. Reference control plane:
    /// `GET /api/extensions/info`.
    async fn capabilities(&self) -> Result<Capabilities> {
        Ok(Capabilities::default())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A control plane with only the required calls, to check the extension defaults.
    #[derive(Debug)]
    struct Minimal;

    #[async_trait]
    impl ControlPlane for Minimal {
        async fn list_instances(&self) -> Result<Vec<Instance>> {
            Ok(Vec::new())
        }
        async fn get_instance(&self, id: &str) -> Result<Instance> {
            Err(Error::NotFound {
                call: format!("get {id}"),
                body: String::new(),
            })
        }
        async fn desired_configuration(&self, _: &str) -> Result<Value> {
            Ok(Value::Null)
        }
        async fn runtime_status(&self, id: &str) -> Result<RuntimeInfo> {
            self.get_instance(id).await.map(|_| unreachable!())
        }
        async fn start(&self, _: &str, _: Option<&Value>) -> Result<()> {
            Ok(())
        }
        async fn stop(&self, _: &str) -> Result<()> {
            Ok(())
        }
        async fn restart(&self, _: &str) -> Result<()> {
            Ok(())
        }
        async fn changes_after(&self, _: Option<u64>, _: Duration) -> Result<ChangeBatch> {
            Err(Error::FeedUnsupported {
                call: "changes_after".into(),
                reason: "none".into(),
            })
        }
        async fn changes_since(&self, _: Timestamp) -> Result<Vec<StatusChange>> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn extensions_default_to_unsupported_naming_the_call() {
        let cp: Arc<dyn ControlPlane> = Arc::new(Minimal);
        let err = cp
            .clone_instance("a", &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(matches!(&err, Error::Unsupported { call } if call == "clone_instance"));
        assert_eq!(
            err.to_string(),
            "clone_instance: not supported by this control plane"
        );
        assert!(matches!(
            cp.delete_clone("a").await,
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            cp.set_traffic_weights("e", &[]).await,
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            cp.probe_health("a").await,
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            cp.metrics("a").await,
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            cp.running_configuration("a").await,
            Err(Error::Unsupported { call }) if call == "running_configuration"
        ));
        assert!(matches!(
            cp.running_configurations().await,
            Err(Error::Unsupported { call }) if call == "running_configurations"
        ));
        assert!(matches!(
            cp.set_desired_configuration("a", &serde_json::json!({})).await,
            Err(Error::Unsupported { call }) if call == "set_desired_configuration"
        ));
        assert_eq!(cp.capabilities().await.unwrap(), Capabilities::default());
        assert!(cp.get_instance("x").await.unwrap_err().is_not_found());
    }
}
