//! Why a login is refused, and what the user is told: one same message for every refusal before
//! access is granted, so that the answer tells nothing about what exists.

use super::target::Target;

/// What every refusal before access is granted says, whatever the reason (logged apart): the
/// answer tells nothing about which apps, instances or namespaces exist.
pub const DENIED: &str = "access denied: the user name must be <app-guid>/<index> of an instance, and the password a Kubernetes token allowed to create pods/exec on it";

/// Why a login was refused (logged); [`Refusal::message`] is what the user sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The user name is not `<guid>/<index>`.
    BadUser,
    /// The token is not valid.
    Unauthenticated,
    /// The user may not `create pods/exec` in the namespace (no pod was looked up).
    ForbiddenNamespace {
        /// Kubernetes user name.
        user: String,
        /// The namespace.
        namespace: String,
    },
    /// No such app instance.
    UnknownInstance(Target),
    /// The user may not `create pods/exec` on the pod.
    Forbidden {
        /// Kubernetes user name.
        user: String,
        /// Namespace of the pod.
        namespace: String,
        /// The pod.
        pod: String,
    },
    /// More password attempts on this connection than allowed (no TokenReview made).
    TooManyAttempts,
    /// The source address made too many attempts lately (no TokenReview made).
    RateLimited,
    /// The Kubernetes API failed, or did not answer within the refusal time.
    Internal,
    /// Granted, but the app's pod was not injected with ssh.
    NotEnabled(Target),
    /// Granted, but the daemon cannot be reached or refused the proxy.
    Unreachable(Target),
}

impl Refusal {
    /// Whether the user was granted access (then the reason may be told).
    pub(super) fn after_grant(&self) -> bool {
        matches!(self, Refusal::NotEnabled(_) | Refusal::Unreachable(_))
    }

    /// The message shown to the user: [`DENIED`] for everything before access is granted.
    pub(super) fn message(&self) -> String {
        match self {
            Refusal::NotEnabled(t) => format!(
                "ssh is not enabled for instance {} of app {} (started before ssh was enabled, or without an explicit command)",
                t.index, t.guid
            ),
            Refusal::Unreachable(t) => format!(
                "instance {} of app {} cannot be reached over ssh (not running, or started before ssh was enabled)",
                t.index, t.guid
            ),
            _ => DENIED.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_before_the_grant_all_read_the_same() {
        let target = Target {
            guid: "g".into(),
            index: 0,
        };
        let before = [
            Refusal::BadUser,
            Refusal::Unauthenticated,
            Refusal::ForbiddenNamespace {
                user: "u".into(),
                namespace: "a".into(),
            },
            Refusal::UnknownInstance(target.clone()),
            Refusal::Forbidden {
                user: "system:serviceaccount:a:b".into(),
                namespace: "a".into(),
                pod: "app-0".into(),
            },
            Refusal::TooManyAttempts,
            Refusal::RateLimited,
            Refusal::Internal,
        ];
        for r in &before {
            assert_eq!(r.message(), DENIED, "{r:?}");
        }
        assert!(
            Refusal::Unreachable(target)
                .message()
                .contains("cannot be reached")
        );
    }
}
