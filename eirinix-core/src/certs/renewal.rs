//! What is due: the renewal decisions taken from the wall clock.

use super::*;

/// Why the serving certificate must be re-issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReissueReason {
    /// Past its renew point.
    Expiring,
    /// Past its `not_after`.
    Expired,
    /// Does not cover all the required names.
    NamesChanged,
    /// Was not signed by the current CA.
    NotSignedByCurrentCa,
}

impl fmt::Display for ReissueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Expiring => "expiring",
            Self::Expired => "expired",
            Self::NamesChanged => "names changed",
            Self::NotSignedByCurrentCa => "not signed by the current CA",
        })
    }
}

/// One step of certificate maintenance, as decided by `CertBundle::plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Renewal {
    /// Nothing to do.
    None,
    /// Issue a new serving certificate from the current CA.
    ReissueServing(ReissueReason),
    /// Generate the next CA and add it to the caBundle (serving certificate unchanged).
    StageNextCa,
    /// Make the next CA current, keep the old one as previous, re-issue the serving certificate.
    PromoteNextCa,
    /// Remove the previous CA from the caBundle.
    DropPreviousCa,
    /// The CA expired with no usable successor: start over with a new CA and serving certificate.
    Regenerate,
}

impl Renewal {
    /// True when applying this action changes `CertBundle::ca_bundle_pem`, so the webhook
    /// configuration's caBundle must be updated.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn changes_ca_bundle(&self) -> bool {
        matches!(
            self,
            Self::StageNextCa | Self::PromoteNextCa | Self::DropPreviousCa | Self::Regenerate
        )
    }
}

impl fmt::Display for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("do nothing"),
            Self::ReissueServing(reason) => {
                write!(f, "re-issue the serving certificate ({reason})")
            }
            Self::StageNextCa => f.write_str("stage the next CA"),
            Self::PromoteNextCa => f.write_str("promote the next CA"),
            Self::DropPreviousCa => f.write_str("drop the previous CA"),
            Self::Regenerate => f.write_str("regenerate the CA and serving certificate"),
        }
    }
}
