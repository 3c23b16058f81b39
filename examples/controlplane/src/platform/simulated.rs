//! The Simulated platform: an instance is a record whose start and stop only record the
//! running configuration, so tens of thousands of instances cost a few kilobytes each.
//! It has no process, no port and no traffic; health follows the recorded status.

use crate::model::InstanceStatus;

/// A simulated instance is healthy exactly when it is recorded as running (a pending
/// configuration change does not stop it).
pub fn health(status: InstanceStatus) -> (bool, String) {
    match status {
        InstanceStatus::Running | InstanceStatus::ConfigurationChanged => {
            (true, "simulated instance is running".to_owned())
        }
        other => (false, format!("simulated instance is {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_health_follows_the_recorded_status() {
        assert!(health(InstanceStatus::Running).0);
        assert!(!health(InstanceStatus::Stopped).0);
        assert!(!health(InstanceStatus::Error).0);
    }
}
