//! One review: decoded (see the `decode` module, re-exported here), dispatched to a Pod
//! extension or a webhook of any kind under its failure policy and time budget, and the
//! answer encoded.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use kube::core::admission::Operation;
use tracing::Instrument as _;

#[cfg(feature = "internals")]
pub use crate::decode::scan_only;
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) use crate::decode::{API_VERSION, DecodedReview, ReviewError, decode};
use crate::extension::{Context, Extension, Mutation, Verdict};
use crate::hooks::Hook;
use crate::json_write;
use crate::metrics::{Metrics, Outcome};
use crate::options::FailurePolicy;
use crate::patch_text::PatchText;

/// The answer to one review, before encoding.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct Answer {
    /// Whether the object is admitted.
    pub allowed: bool,
    /// Status code and message of a denial.
    pub denial: Option<(u16, String)>,
    /// JSON patch to apply when admitted, as JSON text.
    pub patch: Option<PatchText>,
    /// Warnings for the client.
    pub warnings: Vec<String>,
}

impl Answer {
    fn allow(warnings: Vec<String>) -> Self {
        Self {
            allowed: true,
            denial: None,
            patch: None,
            warnings,
        }
    }

    fn patch(patch: PatchText, warnings: Vec<String>) -> Self {
        Self {
            allowed: true,
            denial: None,
            patch: Some(patch),
            warnings,
        }
    }

    fn deny(code: u16, message: String) -> Self {
        Self {
            allowed: false,
            denial: Some((code, message)),
            patch: None,
            warnings: Vec::new(),
        }
    }

    /// Encode as an AdmissionReview v1 response for request `uid` (patch base64-encoded, as the apiserver expects).
    ///
    /// Written field by field into one buffer by `json_write` (strings escaped as serde_json
    /// escapes them, the patch written once and base64-encoded in place). The output is byte
    /// for byte what serializing the response struct with serde_json gave (tested against it).
    pub fn encode(&self, uid: &str) -> Vec<u8> {
        let patch = self.patch.as_ref().map(PatchText::as_bytes);
        let patch_len = patch
            .as_ref()
            .map_or(0, |p| base64_simd::STANDARD.encoded_length(p.len()));
        let mut out = Vec::with_capacity(160 + uid.len() + patch_len);
        out.extend_from_slice(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#,
        );
        json_write::string(&mut out, uid);
        out.extend_from_slice(if self.allowed {
            b",\"allowed\":true"
        } else {
            b",\"allowed\":false"
        });
        if let Some((code, message)) = &self.denial {
            out.extend_from_slice(br#","status":{"status":"Failure","code":"#);
            out.extend_from_slice(code.to_string().as_bytes());
            out.extend_from_slice(br#","message":"#);
            json_write::string(&mut out, message);
            out.push(b'}');
        }
        if let Some(patch) = patch {
            out.extend_from_slice(br#","patchType":"JSONPatch","patch":""#);
            // SIMD base64 (runtime-detected AVX2/SSSE3): the general-purpose engine was 6k
            // instructions a review, most of the answer's cost after the patch (issue 20).
            base64_simd::STANDARD.encode_append(patch, &mut out);
            out.push(b'"');
        }
        if !self.warnings.is_empty() {
            out.extend_from_slice(br#","warnings":"#);
            json_write::strings(&mut out, &self.warnings);
        }
        out.extend_from_slice(b"}}");
        out
    }
}

/// How long an extension may take in-process when its caller (the apiserver) waits `timeout`
/// for the whole call: less a margin for connecting, sending the review and the answer, so the
/// failure-policy answer (and its message) reaches the apiserver before it gives up.
pub(crate) fn answer_budget(timeout: Duration) -> Duration {
    let margin = (timeout / 5).clamp(Duration::from_millis(400), Duration::from_secs(2));
    timeout.saturating_sub(margin)
}

/// The apiserver's `timeout` query parameter (a Go duration, e.g. `10s` or `1m0s`): the time it
/// still waits for this call, rounded up to a second.
pub(crate) fn caller_timeout(query: Option<&str>) -> Option<Duration> {
    let value = query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))?;
    let mut total = Duration::ZERO;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(number * scale).ok()?;
        rest = tail;
    }
    (!total.is_zero()).then_some(total)
}

/// What a handler dispatches to: a Pod extension (the fast path) or a webhook of any kind.
#[derive(Clone)]
enum Target {
    Pod(Arc<dyn Extension>),
    Any(Arc<dyn Hook>),
}

/// Dispatches decoded reviews to one extension, applying its failure policy and recording metrics.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct ExtensionHandler {
    target: Target,
    failure_policy: FailurePolicy,
    timeout: Duration,
    index: usize,
    name: String,
}

impl ExtensionHandler {
    /// A handler for `extension`, registered at position `index` in the manager's metrics;
    /// the extension gets at most `timeout` per review (the manager passes its
    /// webhook's `timeoutSeconds` less a margin, so the answer beats the apiserver's deadline).
    pub fn new(
        extension: Arc<dyn Extension>,
        failure_policy: FailurePolicy,
        timeout: Duration,
        index: usize,
    ) -> Self {
        let name = extension.name().to_owned();
        Self {
            target: Target::Pod(extension),
            failure_policy,
            timeout,
            index,
            name,
        }
    }

    /// A handler serving `extension` from its view of the pod, as the manager serves a
    /// [`crate::ViewExtension`] (`new` serves the same extension from a typed Pod).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn for_view<E: crate::ViewExtension>(
        extension: Arc<E>,
        failure_policy: FailurePolicy,
        timeout: Duration,
        index: usize,
    ) -> Self {
        let hook = Arc::new(crate::hooks::ViewHook(extension));
        Self::for_hook(hook, failure_policy, timeout, index)
    }

    /// A handler for a webhook of any kind (a [`crate::Mutator`] or [`crate::Validator`]).
    pub(crate) fn for_hook(
        hook: Arc<dyn Hook>,
        failure_policy: FailurePolicy,
        timeout: Duration,
        index: usize,
    ) -> Self {
        let name = hook.name().to_owned();
        Self {
            target: Target::Any(hook),
            failure_policy,
            timeout,
            index,
            name,
        }
    }

    /// The extension's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Answer one raw review body: `Err` is an HTTP 400, `Ok` the encoded response.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub async fn handle_body(
        &self,
        ctx: &Context,
        metrics: &Metrics,
        body: &[u8],
    ) -> Result<Vec<u8>, ReviewError> {
        self.handle_body_within(ctx, metrics, body, None).await
    }

    /// [`Self::handle_body`] for a caller that waits at most `caller_timeout` for the answer
    /// (the apiserver's `?timeout=`): the extension's time is cut so that the failure-policy
    /// answer still arrives in time.
    pub async fn handle_body_within(
        &self,
        ctx: &Context,
        metrics: &Metrics,
        body: &[u8],
        caller_timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ReviewError> {
        let budget = caller_timeout.map_or(self.timeout, |t| self.timeout.min(answer_budget(t)));
        // The decoded Pod stays where it is (in this future) and is lent to the extension:
        // moving its ~7 KB around cost more than the rest of the dispatch.
        match &self.target {
            Target::Pod(_) => {
                let decoded = decode(body).inspect_err(|_| metrics.bad_request())?;
                let name = match &decoded.pod {
                    Ok(p) => p
                        .metadata
                        .name
                        .clone()
                        .or_else(|| p.metadata.generate_name.clone())
                        .unwrap_or_default(),
                    Err(_) => decoded.request.name.clone(),
                };
                let request = &decoded.request;
                let answering = self.answer_within(ctx, &decoded, budget);
                Ok(self
                    .observe(
                        &request.uid,
                        request.namespace.as_deref(),
                        &name,
                        metrics,
                        answering,
                    )
                    .await)
            }
            Target::Any(hook) => {
                let prepared = hook
                    .prepare(ctx, body)
                    .inspect_err(|_| metrics.bad_request())?;
                let answering = async {
                    match prepared.call {
                        Ok(None) => (Answer::allow(Vec::new()), Outcome::Skipped),
                        Err(reason) => Self::invalid(reason),
                        Ok(Some(call)) => self.run(call, budget).await,
                    }
                };
                let (uid, namespace) = (prepared.uid.clone(), prepared.namespace.clone());
                Ok(self
                    .observe(
                        &uid,
                        namespace.as_deref(),
                        &prepared.name,
                        metrics,
                        answering,
                    )
                    .await)
            }
        }
    }

    /// Await `answering` in a span naming the review, record its outcome and duration, and
    /// encode the answer for request `uid`.
    async fn observe(
        &self,
        uid: &str,
        namespace: Option<&str>,
        object: &str,
        metrics: &Metrics,
        answering: impl std::future::Future<Output = (Answer, Outcome)>,
    ) -> Vec<u8> {
        let start = Instant::now();
        let span = tracing::info_span!(
            "review",
            extension = %self.name,
            uid = %uid,
            namespace = namespace.unwrap_or(""),
            pod = %object,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let (answer, outcome) = answering.instrument(span.clone()).await;
        let elapsed = start.elapsed();
        span.record("outcome", outcome.as_str());
        span.record("duration_us", elapsed.as_micros() as u64);
        span.in_scope(|| tracing::debug!("review answered"));
        if let Some(m) = metrics.extension(self.index) {
            m.observe(outcome, elapsed);
        }
        answer.encode(uid)
    }

    /// Decide the answer to a decoded review.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub async fn answer(&self, ctx: &Context, decoded: &DecodedReview) -> (Answer, Outcome) {
        self.answer_within(ctx, decoded, self.timeout).await
    }

    /// The refusal of a review whose object is unusable.
    fn invalid(reason: String) -> (Answer, Outcome) {
        tracing::info!(%reason, "rejecting review whose object is not usable");
        (Answer::deny(400, reason), Outcome::Invalid)
    }

    /// [`Self::answer`], the extension given at most `budget`.
    async fn answer_within(
        &self,
        ctx: &Context,
        decoded: &DecodedReview,
        budget: Duration,
    ) -> (Answer, Outcome) {
        let req = &decoded.request;
        if matches!(req.operation, Operation::Delete | Operation::Connect) {
            return (Answer::allow(Vec::new()), Outcome::Skipped);
        }
        let pod = match &decoded.pod {
            Ok(pod) => pod,
            Err(reason) => return Self::invalid(reason.clone()),
        };
        let extension = match &self.target {
            Target::Pod(extension) => extension,
            // Only Pod handlers decode reviews as Pods.
            Target::Any(_) => {
                return Self::invalid(format!("{} does not admit Pods", self.name));
            }
        };
        self.run(extension.mutate(ctx, req, pod), budget).await
    }

    /// Run the extension's call within `budget`, catching panics, and apply the failure
    /// policy to what it returns.
    async fn run<F>(&self, call: F, budget: Duration) -> (Answer, Outcome)
    where
        F: std::future::Future<Output = Result<Mutation, crate::extension::ExtensionError>>,
    {
        let call = AssertUnwindSafe(call).catch_unwind();
        let result = match tokio::time::timeout(budget, call).await {
            Ok(Ok(Ok(mutation))) => Ok(mutation),
            Ok(Ok(Err(e))) => Err((e.code(), e.message())),
            Ok(Err(_panic)) => Err((500, format!("extension {} panicked", self.name))),
            Err(_) => Err((
                500,
                format!("extension {} did not answer within {budget:?}", self.name),
            )),
        };
        match result {
            Ok(Mutation { verdict, warnings }) => match verdict {
                Verdict::Unchanged => (Answer::allow(warnings), Outcome::Skipped),
                Verdict::Patch(p) if p.0.is_empty() => (Answer::allow(warnings), Outcome::Skipped),
                Verdict::PatchText(p) if p.is_empty() => {
                    (Answer::allow(warnings), Outcome::Skipped)
                }
                Verdict::Patch(p) => (
                    Answer::patch(PatchText::from(&p), warnings),
                    Outcome::Patched,
                ),
                Verdict::PatchText(p) => (Answer::patch(p, warnings), Outcome::Patched),
                Verdict::Deny { message, code } => {
                    tracing::info!(%message, "extension denied the object");
                    let mut a = Answer::deny(code, message);
                    a.warnings = warnings;
                    (a, Outcome::Denied)
                }
            },
            Err((code, message)) => {
                let message = format!("{}: {message}", self.name);
                match self.failure_policy {
                    FailurePolicy::Fail => {
                        tracing::warn!(%message, "extension failed; denying (failure policy Fail)");
                        (Answer::deny(code, message), Outcome::Errored)
                    }
                    FailurePolicy::Ignore => {
                        tracing::warn!(%message, "extension failed; admitting unmutated (failure policy Ignore)");
                        (
                            Answer::allow(vec![format!("{message} (admitted unmutated)")]),
                            Outcome::Errored,
                        )
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde::Serialize;

    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ReviewOut<'a> {
        api_version: &'static str,
        kind: &'static str,
        response: ResponseOut<'a>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ResponseOut<'a> {
        uid: &'a str,
        allowed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<StatusOut<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch_type: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<String>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        warnings: &'a [String],
    }

    #[derive(Serialize)]
    struct StatusOut<'a> {
        status: &'static str,
        code: u16,
        message: &'a str,
    }

    /// The encoding `Answer::encode` replaced: the response struct through serde_json.
    fn encode_with_serde(answer: &Answer, uid: &str) -> Vec<u8> {
        let patch = answer.patch.as_ref().map(|p| {
            let ops = p.to_patch().unwrap();
            base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&ops).unwrap())
        });
        let out = ReviewOut {
            api_version: API_VERSION,
            kind: "AdmissionReview",
            response: ResponseOut {
                uid,
                allowed: answer.allowed,
                status: answer.denial.as_ref().map(|(code, message)| StatusOut {
                    status: "Failure",
                    code: *code,
                    message,
                }),
                patch_type: patch.as_ref().map(|_| "JSONPatch"),
                patch,
                warnings: &answer.warnings,
            },
        };
        serde_json::to_vec(&out).unwrap()
    }

    #[test]
    fn the_answer_is_encoded_as_serde_json_encodes_the_response() {
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/metadata/annotations", "value": {"eirinix.org/persi": "injected"}},
            {"op": "add", "path": "/spec/volumes/-", "value": {"name": "v\"1\u{e9}", "emptyDir": {}}},
        ]))
        .unwrap();
        let answers = [
            Answer::allow(Vec::new()),
            Answer::allow(vec!["w1".into(), "quote \" and \\ and \n and \u{1}".into()]),
            Answer::deny(403, "denied: \"x\"\t\u{7f} é".into()),
            Answer {
                allowed: true,
                denial: None,
                patch: Some(PatchText::from(&patch)),
                warnings: vec!["warn".into()],
            },
            Answer {
                allowed: true,
                denial: None,
                patch: Some(PatchText::new()),
                warnings: Vec::new(),
            },
            Answer {
                allowed: false,
                denial: Some((500, String::new())),
                patch: Some(PatchText::from(&patch)),
                warnings: vec![String::new()],
            },
        ];
        // Patches of every length modulo 3, short and past the SIMD encoder's blocks.
        let mut answers = answers.to_vec();
        for len in 0..70 {
            let mut patch = PatchText::new();
            let path = json_patch::jsonptr::Pointer::from_static("/a");
            patch.add(path, &"x".repeat(len)).unwrap();
            answers.push(Answer::patch(patch, Vec::new()));
        }
        for uid in [
            "705ab4f5-6393-11e8-b7cc-42010a800002",
            "",
            "odd \"uid\" \\ \u{2028}",
        ] {
            for a in &answers {
                let ours = a.encode(uid);
                assert_eq!(
                    String::from_utf8(ours.clone()).unwrap(),
                    String::from_utf8(encode_with_serde(a, uid)).unwrap(),
                    "{a:?}"
                );
                let v: serde_json::Value = serde_json::from_slice(&ours).unwrap();
                assert_eq!(v["response"]["uid"], uid);
            }
        }
    }

    #[test]
    fn the_apiservers_timeout_parameter_is_read() {
        let secs = Duration::from_secs;
        assert_eq!(caller_timeout(Some("timeout=10s")), Some(secs(10)));
        assert_eq!(caller_timeout(Some("a=b&timeout=1m0s")), Some(secs(60)));
        assert_eq!(
            caller_timeout(Some("timeout=1.5s")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            caller_timeout(Some("timeout=250ms")),
            Some(Duration::from_millis(250))
        );
        for bad in [
            None,
            Some(""),
            Some("timeout="),
            Some("timeout=10"),
            Some("timeout=s"),
            Some("timeout=3x"),
        ] {
            assert_eq!(caller_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_answer_leaves_a_margin_before_the_callers_deadline() {
        let ms = Duration::from_millis;
        assert_eq!(answer_budget(ms(1000)), ms(600));
        assert_eq!(answer_budget(ms(2000)), ms(1600));
        assert_eq!(answer_budget(ms(10_000)), ms(8_000));
        assert_eq!(answer_budget(ms(30_000)), ms(28_000));
        assert_eq!(answer_budget(ms(100)), Duration::ZERO);
    }
}

#[cfg(test)]
mod any_kind_tests {
    use std::time::Duration;

    use k8s_openapi::api::apps::v1::StatefulSet;
    use kube::core::admission::AdmissionRequest;
    use serde_json::{Value, json};

    use std::sync::Arc;

    use super::ExtensionHandler;
    use crate::extension::{Context, ExtensionError, Validation, Validator};
    use crate::hooks::{ResourceRule, ValidatorHook};
    use crate::metrics::Metrics;
    use crate::options::{FailurePolicy, Settings};

    /// Denies every StatefulSet whose (new or old) name is "bad"; says what it saw.
    struct NoBad;

    #[async_trait::async_trait]
    impl Validator for NoBad {
        type Object = StatefulSet;
        fn name(&self) -> &str {
            "no-bad"
        }
        async fn validate(
            &self,
            _ctx: &Context,
            request: &AdmissionRequest<StatefulSet>,
        ) -> Result<Validation, ExtensionError> {
            let name = |o: &Option<StatefulSet>| o.as_ref().and_then(|s| s.metadata.name.clone());
            let seen = format!(
                "object={:?} old={:?}",
                name(&request.object),
                name(&request.old_object)
            );
            Ok(
                if [name(&request.object), name(&request.old_object)].contains(&Some("bad".into()))
                {
                    Validation::deny(seen)
                } else {
                    Validation::allow().with_warning(seen)
                },
            )
        }
    }

    fn review(kind: Value, operation: &str, object: Value, old: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1", "kind": kind,
                "resource": {"group": "apps", "version": "v1", "resource": "statefulsets"},
                "namespace": "ns", "operation": operation, "userInfo": {},
                "object": object, "oldObject": old,
            }
        }))
        .unwrap()
    }

    fn sts_kind() -> Value {
        json!({"group": "apps", "version": "v1", "kind": "StatefulSet"})
    }

    async fn answer(body: &[u8]) -> Value {
        let handler = ExtensionHandler::for_hook(
            Arc::new(ValidatorHook(Arc::new(NoBad))),
            FailurePolicy::Fail,
            Duration::from_secs(1),
            0,
        );
        let ctx = Context::offline(Arc::new(Settings::default()));
        let out = handler
            .handle_body(&ctx, &Metrics::new(["no-bad"]), body)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&out).unwrap()["response"].clone()
    }

    #[tokio::test]
    async fn a_validator_sees_its_kind_and_the_old_object() {
        let sts = |name: &str| json!({"metadata": {"name": name}});
        let r = answer(&review(sts_kind(), "CREATE", sts("good"), Value::Null)).await;
        assert_eq!(r["allowed"], true);
        assert_eq!(r["warnings"][0], r#"object=Some("good") old=None"#);
        let r = answer(&review(sts_kind(), "CREATE", sts("bad"), Value::Null)).await;
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 403);
        // A deletion: only the old object, and the validator is asked.
        let r = answer(&review(sts_kind(), "DELETE", Value::Null, sts("bad"))).await;
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["message"], r#"object=None old=Some("bad")"#);
    }

    #[tokio::test]
    async fn another_kind_or_an_undecodable_object_is_refused_with_the_reason() {
        let pod = json!({"group": "", "version": "v1", "kind": "Pod"});
        let r = answer(&review(pod, "CREATE", json!({}), Value::Null)).await;
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 400);
        assert_eq!(r["status"]["message"], "object is a Pod, not a StatefulSet");
        let broken = json!({"metadata": {"name": 5}});
        let r = answer(&review(sts_kind(), "CREATE", broken, Value::Null)).await;
        assert_eq!(r["status"]["code"], 400);
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("object does not decode as a StatefulSet: "),
            "{message}"
        );
        let r = answer(&review(sts_kind(), "UPDATE", json!({}), json!([]))).await;
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("old object does not decode as a StatefulSet"),
            "{message}"
        );
    }

    #[test]
    fn rules_name_the_kinds_resource() {
        assert_eq!(
            ResourceRule::of::<StatefulSet>(),
            ResourceRule {
                group: "apps".into(),
                version: "v1".into(),
                resource: "statefulsets".into(),
                scope: "*".into(),
            }
        );
    }
}
