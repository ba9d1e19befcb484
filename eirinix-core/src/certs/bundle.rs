//! The bundle of CA(s) and serving certificate kept in one Secret, and its renewals.

use super::*;

/// The whole certificate state shared by replicas (stored in one Secret).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct CertBundle {
    /// The CA that signs the serving certificate.
    pub ca: CaCert,
    /// The serving certificate.
    pub serving: ServingCert,
    /// A staged successor CA, already trusted in the caBundle but not yet signing.
    pub next_ca: Option<CaCert>,
    /// The CA replaced by the last promotion, still trusted for a while (PEM).
    pub previous_ca_pem: Option<String>,
    /// When `next_ca` was staged (the promotion delay counts from here).
    pub next_ca_staged_at: Option<OffsetDateTime>,
    /// When `previous_ca_pem` was replaced (the retention counts from here).
    pub previous_ca_retired_at: Option<OffsetDateTime>,
}

impl CertBundle {
    /// Generates a new CA and a serving certificate for `names` signed by it.
    pub fn generate(
        names: &SubjectNames,
        policy: &CertPolicy,
        now: OffsetDateTime,
    ) -> Result<Self, CertError> {
        policy.validate()?;
        if names.is_empty() {
            return Err(CertError::NoSubjectNames);
        }
        let ca = CaCert::generate(policy, now)?;
        let serving = ServingCert::issue(&ca, names, policy, now)?;
        Ok(Self {
            ca,
            serving,
            next_ca: None,
            previous_ca_pem: None,
            next_ca_staged_at: None,
            previous_ca_retired_at: None,
        })
    }

    /// PEM for the webhook configuration's caBundle: current CA, then the staged next CA, then
    /// the previous CA (kept until [`Renewal::DropPreviousCa`], which `plan` returns once it
    /// expires; see [`Self::ca_bundle_pem_at`] to filter expired ones).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn ca_bundle_pem(&self) -> String {
        self.ca_bundle_pem_filtered(None)
    }

    /// Like [`Self::ca_bundle_pem`], leaving out a next/previous CA that is expired at `now`.
    pub fn ca_bundle_pem_at(&self, now: OffsetDateTime) -> String {
        self.ca_bundle_pem_filtered(Some(now))
    }

    pub(super) fn ca_bundle_pem_filtered(&self, now: Option<OffsetDateTime>) -> String {
        let alive = |not_after: Option<OffsetDateTime>| match (now, not_after) {
            (Some(now), Some(not_after)) => now < not_after,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let mut out = String::new();
        push_pem(&mut out, &self.ca.cert_pem);
        if let Some(next) = &self.next_ca
            && alive(Some(next.not_after))
        {
            push_pem(&mut out, &next.cert_pem);
        }
        if let Some(previous) = &self.previous_ca_pem
            && alive(self.previous_ca_not_after())
        {
            push_pem(&mut out, previous);
        }
        out
    }

    /// The serving chain for a TLS server: leaf first, then the current CA (what `tls.crt` holds).
    pub fn serving_chain_pem(&self) -> String {
        let mut out = String::new();
        push_pem(&mut out, &self.serving.cert_pem);
        push_pem(&mut out, &self.ca.cert_pem);
        out
    }

    /// rustls material for the serving chain and key (see [`certified_key`]).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, CertError> {
        certified_key(&self.serving_chain_pem(), &self.serving.key_pem)
    }

    /// The next thing to do at `now` (at most one action per call; the caller loops until
    /// [`Renewal::None`]).
    pub fn plan(&self, names: &SubjectNames, policy: &CertPolicy, now: OffsetDateTime) -> Renewal {
        // 0. A dead CA cannot sign: switch to a valid successor at once, or start over.
        if now >= self.ca.not_after {
            return match &self.next_ca {
                Some(next) if next.not_before <= now && now < next.not_after => {
                    Renewal::PromoteNextCa
                }
                _ => Renewal::Regenerate,
            };
        }
        // 1. An expired serving certificate breaks every admission call.
        if now >= self.serving.not_after {
            return Renewal::ReissueServing(ReissueReason::Expired);
        }
        // 2./3. CA rotation.
        match &self.next_ca {
            None if now >= self.ca.renew_at(policy) => return Renewal::StageNextCa,
            Some(_) if now >= self.promote_at(policy) => return Renewal::PromoteNextCa,
            _ => {}
        }
        // 4. Wrong issuer or names.
        if !self.serving.signed_by(&self.ca) {
            return Renewal::ReissueServing(ReissueReason::NotSignedByCurrentCa);
        }
        if !names.covered_by(&self.serving) {
            return Renewal::ReissueServing(ReissueReason::NamesChanged);
        }
        // 5. Routine renewal (pointless while the certificate already ends with the CA).
        if self.serving_renewable() && now >= self.serving.renew_at(policy) {
            return Renewal::ReissueServing(ReissueReason::Expiring);
        }
        // 6. Retire the previous CA.
        if self.previous_ca_pem.is_some() && now >= self.drop_previous_at(policy) {
            return Renewal::DropPreviousCa;
        }
        Renewal::None
    }

    /// Performs `action` at `now`, returning the new bundle (`self` is unchanged).
    pub fn apply(
        &self,
        action: &Renewal,
        names: &SubjectNames,
        policy: &CertPolicy,
        now: OffsetDateTime,
    ) -> Result<Self, CertError> {
        policy.validate()?;
        let mut next = self.clone();
        match action {
            Renewal::None => {}
            Renewal::Regenerate => return Self::generate(names, policy, now),
            Renewal::ReissueServing(_) => {
                next.serving = ServingCert::issue(&self.ca, names, policy, now)?;
            }
            Renewal::StageNextCa => {
                next.next_ca = Some(CaCert::generate(policy, now)?);
                next.next_ca_staged_at = Some(now);
            }
            Renewal::PromoteNextCa => {
                let Some(new_ca) = self.next_ca.clone() else {
                    return Err(CertError::NotApplicable {
                        action: action.to_string(),
                        reason: "no next CA is staged",
                    });
                };
                next.serving = ServingCert::issue(&new_ca, names, policy, now)?;
                next.previous_ca_pem = Some(self.ca.cert_pem.clone());
                next.previous_ca_retired_at = Some(now);
                next.ca = new_ca;
                next.next_ca = None;
                next.next_ca_staged_at = None;
            }
            Renewal::DropPreviousCa => {
                if self.previous_ca_pem.is_none() {
                    return Err(CertError::NotApplicable {
                        action: action.to_string(),
                        reason: "there is no previous CA",
                    });
                }
                next.previous_ca_pem = None;
                next.previous_ca_retired_at = None;
            }
        }
        Ok(next)
    }

    /// Earliest instant at which `plan` may return something other than [`Renewal::None`]
    /// (assuming unchanged names); may be in the past when an action is already due.
    pub fn next_action_at(&self, policy: &CertPolicy) -> OffsetDateTime {
        let mut at = self.ca.not_after.min(self.serving.not_after);
        at = at.min(match &self.next_ca {
            None => self.ca.renew_at(policy),
            Some(_) => self.promote_at(policy),
        });
        if !self.serving.signed_by(&self.ca) {
            at = at.min(self.serving.not_before);
        }
        if self.serving_renewable() {
            at = at.min(self.serving.renew_at(policy));
        }
        if self.previous_ca_pem.is_some() {
            at = at.min(self.drop_previous_at(policy));
        }
        at
    }

    /// The Secret `data` map (keys as in the module docs); `tls.crt` is the serving chain
    /// (leaf + CA).
    pub fn to_secret_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut data = BTreeMap::new();
        let mut put = |key: &str, value: String| {
            data.insert(key.to_owned(), value.into_bytes());
        };
        put(TLS_CRT, self.serving_chain_pem());
        put(TLS_KEY, self.serving.key_pem.clone());
        put(CA_CRT, self.ca.cert_pem.clone());
        put(CA_KEY, self.ca.key_pem.clone());
        if let Some(next) = &self.next_ca {
            put(CA_NEXT_CRT, next.cert_pem.clone());
            put(CA_NEXT_KEY, next.key_pem.clone());
            if let Some(at) = self.next_ca_staged_at.and_then(format_timestamp) {
                put(CA_NEXT_STAGED_AT, at);
            }
        }
        if let Some(previous) = &self.previous_ca_pem {
            put(CA_PREVIOUS_CRT, previous.clone());
            if let Some(at) = self.previous_ca_retired_at.and_then(format_timestamp) {
                put(CA_PREVIOUS_RETIRED_AT, at);
            }
        }
        data
    }

    /// Parses and validates a Secret `data` map: every key must match its certificate and the
    /// serving certificate must be signed by the CA (a serving certificate signed by the next
    /// or previous CA is accepted too; `plan` then re-issues it).
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, CertError> {
        // Serving chain first, so a missing/garbled `tls.crt` is reported as such.
        let chain = cert_ders(TLS_CRT, required(data, TLS_CRT)?)?;
        let Some(leaf_der) = chain.into_iter().next() else {
            return Err(pem_error(TLS_CRT, "no CERTIFICATE block"));
        };
        let leaf = ParsedCert::parse(TLS_CRT, &leaf_der)?;
        if leaf.is_ca {
            return Err(CertError::InvalidCertificate {
                key: TLS_CRT.into(),
                reason: "the first certificate is a CA; expected the serving (leaf) certificate"
                    .into(),
            });
        }
        let serving_key = parse_key_pair(TLS_KEY, required(data, TLS_KEY)?)?;
        if serving_key.subject_public_key_info() != leaf.spki {
            return Err(CertError::KeyMismatch {
                cert: TLS_CRT.into(),
                key: TLS_KEY.into(),
            });
        }

        let ca = CaCert::from_secret(data, CA_CRT, CA_KEY)?;
        let next_ca = match (
            data.contains_key(CA_NEXT_CRT),
            data.contains_key(CA_NEXT_KEY),
        ) {
            (false, false) => None,
            (true, false) => return Err(missing(CA_NEXT_KEY)),
            (false, true) => return Err(missing(CA_NEXT_CRT)),
            (true, true) => Some(CaCert::from_secret(data, CA_NEXT_CRT, CA_NEXT_KEY)?),
        };
        let previous_der = match data.get(CA_PREVIOUS_CRT) {
            None => None,
            Some(bytes) => {
                let der = first_cert_der(CA_PREVIOUS_CRT, bytes)?;
                if !ParsedCert::parse(CA_PREVIOUS_CRT, &der)?.is_ca {
                    return Err(CertError::NotCa {
                        key: CA_PREVIOUS_CRT.into(),
                    });
                }
                Some(der)
            }
        };

        let ca_der = first_cert_der(CA_CRT, ca.cert_pem.as_bytes())?;
        let mut candidates = vec![(ca_der, ca.spki_der.clone())];
        if let Some(next) = &next_ca {
            let der = first_cert_der(CA_NEXT_CRT, next.cert_pem.as_bytes())?;
            candidates.push((der, next.spki_der.clone()));
        }
        if let Some(der) = &previous_der {
            let spki = ParsedCert::parse(CA_PREVIOUS_CRT, der)?.spki;
            candidates.push((der.clone(), spki));
        }
        let issuer_spki_der = candidates
            .into_iter()
            .find(|(ca_der, _)| signature_verifies(&leaf_der, ca_der))
            .map(|(_, spki)| spki)
            .ok_or_else(|| CertError::NotSignedByCa {
                key: TLS_CRT.into(),
                ca_key: CA_CRT.into(),
            })?;

        let serving = ServingCert {
            cert_pem: cert_pem_from_der(&leaf_der),
            key_pem: serving_key.serialize_pem(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            dns: leaf.dns,
            ips: leaf.ips,
            issuer_spki_der,
        };

        // Missing timestamps (hand-made Secret): fall back to conservative estimates that can
        // only delay promotion/dropping, never hasten it.
        let next_ca_staged_at =
            match &next_ca {
                None => None,
                Some(next) => Some(parse_timestamp(data, CA_NEXT_STAGED_AT)?.unwrap_or_else(
                    || add_saturating_time(next.not_before, MAX_BACKDATE_AND_ROUNDING),
                )),
            };
        let previous_ca_retired_at = match &previous_der {
            None => None,
            Some(_) => Some(
                parse_timestamp(data, CA_PREVIOUS_RETIRED_AT)?.unwrap_or_else(|| {
                    add_saturating_time(serving.not_before, MAX_BACKDATE_AND_ROUNDING)
                }),
            ),
        };

        Ok(Self {
            ca,
            serving,
            next_ca,
            previous_ca_pem: previous_der.as_deref().map(cert_pem_from_der),
            next_ca_staged_at,
            previous_ca_retired_at,
        })
    }

    /// When the staged next CA becomes due for promotion.
    pub(super) fn promote_at(&self, policy: &CertPolicy) -> OffsetDateTime {
        let staged = self.next_ca_staged_at.unwrap_or_else(|| {
            self.next_ca.as_ref().map_or(self.ca.not_before, |next| {
                add_saturating_time(next.not_before, MAX_BACKDATE_AND_ROUNDING)
            })
        });
        add_saturating(staged, policy.ca_promote_delay)
    }

    /// When the previous CA becomes due for removal (its expiry or end of retention).
    pub(super) fn drop_previous_at(&self, policy: &CertPolicy) -> OffsetDateTime {
        let retired = self.previous_ca_retired_at.unwrap_or_else(|| {
            add_saturating_time(self.serving.not_before, MAX_BACKDATE_AND_ROUNDING)
        });
        let retention_end = add_saturating(retired, policy.previous_ca_retention);
        // An unreadable previous CA is useless: drop it right away.
        let expiry = self
            .previous_ca_not_after()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        retention_end.min(expiry)
    }

    pub(super) fn previous_ca_not_after(&self) -> Option<OffsetDateTime> {
        let pem = self.previous_ca_pem.as_ref()?;
        let der = first_cert_der(CA_PREVIOUS_CRT, pem.as_bytes()).ok()?;
        ParsedCert::parse(CA_PREVIOUS_CRT, &der)
            .ok()
            .map(|p| p.not_after)
    }

    /// False when the serving certificate already ends when the CA does, so re-issuing it
    /// could not extend it (CA rotation will).
    pub(super) fn serving_renewable(&self) -> bool {
        self.serving.not_after < self.ca.not_after
    }
}
