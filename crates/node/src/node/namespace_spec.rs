//! A namespace's policy as it can be written down (the CLI, the config, the state file):
//! [`NamespaceSpec`] and its [`AcceptMode`]. It depends on nothing else of the node, so
//! the config, the state file and the handle all build on it.

use std::collections::BTreeMap;
use std::str::FromStr;

use replic8::feed_store::{AcceptPolicy, NamespacePolicy};
use serde::{Deserialize, Serialize};

/// Which offered feeds new to the store a namespace accepts, as the CLI, the config and
/// the state file write it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptMode {
    /// Every one (within the quotas), or, with accept headers, those that carry them.
    All,
    /// Only feeds held in the namespace already (the default).
    #[default]
    Held,
    /// None: the namespace only shares.
    None,
    /// Each waits for `replic8 accept` / `replic8 reject` (bounded in number and time).
    Manual,
}

impl AcceptMode {
    /// The mode as written (`all`, `held`, `none`, `manual`).
    pub fn as_str(self) -> &'static str {
        match self {
            AcceptMode::All => "all",
            AcceptMode::Held => "held",
            AcceptMode::None => "none",
            AcceptMode::Manual => "manual",
        }
    }
}

impl FromStr for AcceptMode {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "all" => Ok(AcceptMode::All),
            "held" => Ok(AcceptMode::Held),
            "none" => Ok(AcceptMode::None),
            "manual" => Ok(AcceptMode::Manual),
            other => Err(SpecError::BadAccept(other.to_owned())),
        }
    }
}

/// A namespace's policy in a form that can be written down (and so persisted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// Which new feeds to accept.
    pub accept: AcceptMode,
    /// With [`AcceptMode::All`]: accept only feeds whose headers hold each of these keys
    /// with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub accept_headers: BTreeMap<String, String>,
    /// Offer accepted feeds to the namespace's other peers.
    pub forward: bool,
}

impl NamespaceSpec {
    /// A spec from what the user gave: `accept` defaults to `all` when headers are given,
    /// else `held`; `forward` defaults to whether the namespace accepts new feeds.
    /// Headers go only with `all`.
    pub fn new(
        accept: Option<AcceptMode>,
        accept_headers: BTreeMap<String, String>,
        forward: Option<bool>,
    ) -> Result<Self, SpecError> {
        let accept = accept.unwrap_or(if accept_headers.is_empty() {
            AcceptMode::Held
        } else {
            AcceptMode::All
        });
        if !accept_headers.is_empty() && accept != AcceptMode::All {
            return Err(SpecError::HeadersNeedAll(accept));
        }
        let spec = NamespaceSpec {
            accept,
            accept_headers,
            forward: forward.unwrap_or(matches!(accept, AcceptMode::All | AcceptMode::Manual)),
        };
        Ok(spec)
    }

    /// The store's policy for this spec.
    pub fn policy(&self) -> NamespacePolicy {
        let accept = match self.accept {
            AcceptMode::All if self.accept_headers.is_empty() => AcceptPolicy::All,
            AcceptMode::All => AcceptPolicy::HeadersMatch(
                self.accept_headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                    .collect(),
            ),
            AcceptMode::Held => AcceptPolicy::HeldOnly,
            AcceptMode::None => AcceptPolicy::None,
            AcceptMode::Manual => AcceptPolicy::Manual,
        };
        NamespacePolicy {
            accept,
            forward: self.forward,
        }
    }
}

/// A namespace policy that cannot be written down as given.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// An accept mode is not one of the four.
    #[error("accept {0:?}: expected all, held, none or manual")]
    BadAccept(String),
    /// Accept headers were given with a mode other than `all`.
    #[error("accept headers take accept all, not {}", .0.as_str())]
    HeadersNeedAll(AcceptMode),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_take_their_defaults_and_refuse_headers_without_all() {
        let headers = BTreeMap::from([("kind".to_owned(), "photo".to_owned())]);
        let spec = NamespaceSpec::new(None, headers.clone(), None).unwrap();
        assert_eq!(spec.accept, AcceptMode::All);
        assert!(spec.forward);
        assert!(matches!(
            spec.policy().accept,
            AcceptPolicy::HeadersMatch(ref h) if h == &[("kind".to_owned(), b"photo".to_vec())]
        ));
        let held = NamespaceSpec::new(None, BTreeMap::new(), None).unwrap();
        assert_eq!((held.accept, held.forward), (AcceptMode::Held, false));
        let manual = NamespaceSpec::new(Some(AcceptMode::Manual), BTreeMap::new(), Some(false));
        assert!(!manual.unwrap().forward);
        assert!(matches!(
            NamespaceSpec::new(Some(AcceptMode::Manual), headers, None),
            Err(SpecError::HeadersNeedAll(AcceptMode::Manual))
        ));
        assert!("some".parse::<AcceptMode>().is_err());
        assert_eq!("none".parse::<AcceptMode>().unwrap(), AcceptMode::None);
    }
}
