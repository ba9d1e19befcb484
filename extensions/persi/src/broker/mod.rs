//! An Open Service Broker API (v2.17) server for persi volumes.
//!
//! `cf create-service` provisions a PVC, `cf bind-service` returns the `volume_id` and
//! `volume_mounts` that end up in the app's `VCAP_SERVICES` (where the webhook finds them),
//! `cf unbind-service` and `cf delete-service` clean up. All state lives on the PVCs, so the
//! broker can restart or run replicated.

mod config;
mod store;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use crate::names;

pub use config::{
    ACCESS_MODES, BrokerConfig, Catalog, ConfigError, PlanConfig, ServiceOffering, is_quantity,
};
pub use store::{
    BINDING_PREFIX, CONTEXT_ANNOTATION, INSTANCE_ANNOTATION, INSTANCE_LABEL, MANAGED_BY,
    MANAGED_BY_LABEL, ORG_LABEL, PARAMETERS_ANNOTATION, PLAN_ANNOTATION, SERVICE_ANNOTATION,
    SPACE_LABEL, StoredBinding, binding_key,
};

use store::{Deletion, Instance, Lookup, NewInstance, Store, Update};

/// The OSB API version this broker implements.
pub const API_VERSION: &str = "2.17";

/// Header carrying the platform's API version.
pub const VERSION_HEADER: &str = "x-broker-api-version";

/// `driver` of the volume mounts the broker returns.
pub const DRIVER: &str = "persi";

/// Attempts of a read-modify-write on a PVC before answering 422 ConcurrencyError.
const UPDATE_ATTEMPTS: u32 = 16;

/// Pause before retry `attempt` of a conflicting update: grows linearly, with jitter so that
/// concurrent writers spread out (each round lets at least one of them through).
async fn backoff(attempt: u32) {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 10_000)
        .unwrap_or(0);
    let pause = std::time::Duration::from_micros(u64::from(attempt) * 5_000 + u64::from(jitter));
    tokio::time::sleep(pause).await;
}

/// A failure of [`serve_broker`].
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding or serving failed.
    #[error("broker server on {addr}: {source}")]
    Io {
        /// Listening address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

struct BrokerState {
    config: BrokerConfig,
    config_problem: Option<String>,
    store: Store,
    expected_auth: String,
}

type Shared = Arc<BrokerState>;

/// An OSB reply: status and JSON body.
type Reply = (StatusCode, axum::Json<Value>);

fn reply(status: StatusCode, body: Value) -> Reply {
    (status, axum::Json(body))
}

/// An error in OSB format: `{"error": code, "description": text}`.
fn osb_error(status: StatusCode, code: &str, description: impl Into<String>) -> Reply {
    reply(
        status,
        json!({ "error": code, "description": description.into() }),
    )
}

fn bad_request(description: impl Into<String>) -> Reply {
    osb_error(StatusCode::BAD_REQUEST, "BadRequest", description)
}

fn internal(e: &kube::Error) -> Reply {
    tracing::warn!(error = %e, "Kubernetes API call failed");
    osb_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        format!("Kubernetes API: {e}"),
    )
}

fn concurrency() -> Reply {
    osb_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "ConcurrencyError",
        "another operation on this service instance is in progress; retry",
    )
}

fn gone() -> Reply {
    reply(StatusCode::GONE, json!({}))
}

/// The broker as an axum router (mount it in an operator binary, or use [`serve_broker`]).
///
/// An invalid `config` is logged and every request gets 500: the broker never serves with,
/// say, an empty password. Check [`BrokerConfig::validate`] at start-up to fail early.
pub fn broker_router(config: BrokerConfig, client: kube::Client) -> Router {
    let config_problem = config.validate().err().map(|e| e.to_string());
    if let Some(problem) = &config_problem {
        tracing::error!(%problem, "persi broker configuration is invalid; answering 500");
    }
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", config.username, config.password))
    );
    let state = Arc::new(BrokerState {
        store: Store::new(client, &config.namespace),
        config,
        config_problem,
        expected_auth,
    });
    Router::new()
        .route("/v2/catalog", get(catalog))
        .route(
            "/v2/service_instances/{instance_id}",
            put(provision)
                .get(fetch_instance)
                .patch(update)
                .delete(deprovision),
        )
        .route(
            "/v2/service_instances/{instance_id}/last_operation",
            get(instance_last_operation),
        )
        .route(
            "/v2/service_instances/{instance_id}/service_bindings/{binding_id}",
            put(bind).get(fetch_binding).delete(unbind),
        )
        .route(
            "/v2/service_instances/{instance_id}/service_bindings/{binding_id}/last_operation",
            get(binding_last_operation),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Serve the broker over plain HTTP on `addr` until `shutdown` completes (TLS is the ingress's job).
pub async fn serve_broker(
    config: BrokerConfig,
    client: kube::Client,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BrokerError> {
    config.validate()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Io {
            addr: addr.to_string(),
            source,
        })?;
    serve_broker_on(listener, config, client, shutdown).await
}

/// Serve the broker on an already bound `listener` (port 0 in tests) until `shutdown` completes.
pub async fn serve_broker_on(
    listener: TcpListener,
    config: BrokerConfig,
    client: kube::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BrokerError> {
    config.validate()?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, namespace = %config.namespace, "persi broker listening");
    axum::serve(listener, broker_router(config, client))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| BrokerError::Io { addr, source })
}

/// Constant-time comparison (credentials must not leak through timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

/// Configuration, basic auth (401), then API version (412), before any handler.
async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(problem) = &state.config_problem {
        return osb_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("broker misconfigured: {problem}"),
        )
        .into_response();
    }
    let headers = request.headers();
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| same(v.as_bytes(), state.expected_auth.as_bytes()));
    if !authorized {
        let mut r = osb_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing or wrong basic-auth credentials",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"persi broker\""),
        );
        return r;
    }
    let (min_major, min_minor) = state.config.min_version();
    let version = headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let supported = version
        .as_deref()
        .and_then(config::parse_version)
        .is_some_and(|(major, minor)| major == min_major && minor >= min_minor);
    if !supported {
        let description = match version {
            None => format!(
                "the X-Broker-API-Version header is required (this broker implements {API_VERSION})"
            ),
            Some(v) => format!(
                "X-Broker-API-Version {v:?} is not supported: {min_major}.{min_minor} or newer {min_major}.x is required"
            ),
        };
        return osb_error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            description,
        )
        .into_response();
    }
    next.run(request).await
}

async fn not_found() -> Reply {
    osb_error(StatusCode::NOT_FOUND, "NotFound", "no such endpoint")
}

async fn method_not_allowed() -> Reply {
    osb_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "method not allowed on this endpoint",
    )
}

async fn catalog(State(state): State<Shared>) -> Reply {
    let services: Vec<Value> = state
        .config
        .catalog
        .services
        .iter()
        .map(|s| {
            let plans: Vec<Value> = s
                .plans
                .iter()
                .map(|p| {
                    let mut plan = json!({
                        "id": p.id, "name": p.name, "description": p.description,
                        "free": p.free, "bindable": s.bindable, "plan_updateable": false,
                    });
                    if let Some(m) = &p.metadata {
                        plan["metadata"] = m.clone();
                    }
                    plan
                })
                .collect();
            let mut service = json!({
                "id": s.id, "name": s.name, "description": s.description,
                "tags": s.tags, "bindable": s.bindable,
                "requires": ["volume_mount"],
                "plan_updateable": false,
                "instances_retrievable": true,
                "bindings_retrievable": true,
                "plans": plans,
            });
            if let Some(m) = &s.metadata {
                service["metadata"] = m.clone();
            }
            service
        })
        .collect();
    reply(StatusCode::OK, json!({ "services": services }))
}

/// The JSON object body of a request, or a 400.
fn object_body(body: &Bytes) -> Result<Map<String, Value>, Reply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad_request("the request body must be a JSON object")),
        Err(e) => Err(bad_request(format!("the request body is not JSON: {e}"))),
    }
}

fn required_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, Reply> {
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(bad_request(format!("{field} is required (a string)"))),
    }
}

/// The `parameters` object of a request (empty when absent), or a 400.
fn parameters(body: &Map<String, Value>) -> Result<Map<String, Value>, Reply> {
    match body.get("parameters") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(bad_request("parameters must be a JSON object")),
    }
}

fn check_ids(instance_id: &str, binding_id: Option<&str>) -> Result<(), Reply> {
    if instance_id.trim().is_empty() || binding_id.is_some_and(|b| b.trim().is_empty()) {
        return Err(bad_request("instance and binding ids must not be empty"));
    }
    Ok(())
}

fn context_str<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    body.get("context")
        .and_then(|c| c.get(field))
        .or_else(|| body.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

async fn provision(
    State(state): State<Shared>,
    Path(instance_id): Path<String>,
    body: Bytes,
) -> Reply {
    match provision_inner(&state, &instance_id, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn provision_inner(
    state: &BrokerState,
    instance_id: &str,
    body: &Bytes,
) -> Result<Reply, Reply> {
    check_ids(instance_id, None)?;
    let body = object_body(body)?;
    let service_id = required_str(&body, "service_id")?;
    let plan_id = required_str(&body, "plan_id")?;
    let (_, plan) = state.config.plan(service_id, plan_id).ok_or_else(|| {
        bad_request(format!(
            "no plan {plan_id:?} of service {service_id:?} in the catalog"
        ))
    })?;
    let mut params = parameters(&body)?;
    let size = match params.remove("size") {
        None | Some(Value::Null) => plan.size.clone(),
        Some(Value::String(s)) if is_quantity(&s) => s,
        Some(other) => {
            return Err(bad_request(format!(
                "parameter size {other} is not a Kubernetes quantity such as \"5Gi\""
            )));
        }
    };
    if let Some(unknown) = params.keys().next() {
        return Err(bad_request(format!(
            "unknown parameter {unknown:?} (supported: size)"
        )));
    }
    let effective = json!({ "size": size });
    let context = body.get("context").cloned().unwrap_or_else(|| json!({}));
    let new = NewInstance {
        instance_id,
        service_id,
        plan_id,
        parameters: &effective,
        size: &size,
        access_mode: &plan.access_mode,
        storage_class: plan.storage_class.as_deref(),
        org: context_str(&body, "organization_guid"),
        space: context_str(&body, "space_guid"),
        context: &context,
    };
    // Twice at most: a concurrent identical provision may create the PVC between lookup and create.
    for _ in 0..2 {
        match state
            .store
            .lookup(instance_id)
            .await
            .map_err(|e| internal(&e))?
        {
            Lookup::Found(existing) => return compare_instance(&existing, &new),
            Lookup::Foreign(claim) => {
                return Err(osb_error(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "PVC {claim:?} exists and does not belong to service instance {instance_id:?}"
                    ),
                ));
            }
            Lookup::Absent => {}
        }
        if state.store.create(&new).await.map_err(|e| internal(&e))? {
            tracing::info!(%instance_id, claim = %names::claim_name(instance_id), %size, "service instance provisioned");
            return Ok(reply(StatusCode::CREATED, json!({})));
        }
    }
    Err(concurrency())
}

fn compare_instance(existing: &Instance, new: &NewInstance<'_>) -> Result<Reply, Reply> {
    if existing.terminating {
        return Err(concurrency());
    }
    if existing.service_id == new.service_id
        && existing.plan_id == new.plan_id
        && existing.parameters == *new.parameters
    {
        Ok(reply(StatusCode::OK, json!({})))
    } else {
        Err(osb_error(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "service instance {:?} exists with other attributes (plan {:?}, parameters {})",
                new.instance_id, existing.plan_id, existing.parameters
            ),
        ))
    }
}

async fn fetch_instance(State(state): State<Shared>, Path(instance_id): Path<String>) -> Reply {
    match state.store.lookup(&instance_id).await {
        Ok(Lookup::Found(i)) if !i.terminating => reply(
            StatusCode::OK,
            json!({ "service_id": i.service_id, "plan_id": i.plan_id, "parameters": i.parameters }),
        ),
        Ok(_) => osb_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("service instance {instance_id:?} does not exist"),
        ),
        Err(e) => internal(&e),
    }
}

async fn update(Path(instance_id): Path<String>) -> Reply {
    osb_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "UpdateNotSupported",
        format!(
            "service instance {instance_id:?} cannot be updated: plans are not updateable; create a new instance"
        ),
    )
}

async fn instance_last_operation(
    State(state): State<Shared>,
    Path(instance_id): Path<String>,
) -> Reply {
    match state.store.lookup(&instance_id).await {
        Ok(Lookup::Found(i)) if !i.terminating => {
            reply(StatusCode::OK, json!({ "state": "succeeded" }))
        }
        Ok(_) => gone(),
        Err(e) => internal(&e),
    }
}

fn query_ids(query: &HashMap<String, String>) -> Result<(), Reply> {
    for field in ["service_id", "plan_id"] {
        if query.get(field).is_none_or(|v| v.is_empty()) {
            return Err(bad_request(format!("query parameter {field} is required")));
        }
    }
    Ok(())
}

async fn deprovision(
    State(state): State<Shared>,
    Path(instance_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Reply {
    if let Err(r) = query_ids(&query) {
        return r;
    }
    // Look up (the claim must carry the broker's labels), then delete that very version; a
    // claim that changed in between is looked up again.
    for _ in 0..5 {
        let instance = match state.store.lookup(&instance_id).await {
            Ok(Lookup::Found(i)) if !i.terminating => i,
            Ok(_) => return gone(),
            Err(e) => return internal(&e),
        };
        match state.store.delete(&instance).await {
            Ok(Deletion::Done) => {
                tracing::info!(%instance_id, claim = %instance.claim, "service instance deprovisioned");
                return reply(StatusCode::OK, json!({}));
            }
            Ok(Deletion::Gone) => return gone(),
            Ok(Deletion::Changed) => continue,
            Err(e) => return internal(&e),
        }
    }
    osb_error(
        StatusCode::CONFLICT,
        "ConcurrencyError",
        format!("service instance {instance_id:?} keeps changing; try again"),
    )
}

/// Bind parameters: `mount` (absolute path), `mode` (`r`/`rw`) or `readonly` (bool).
fn bind_target(
    config: &BrokerConfig,
    instance_id: &str,
    instance: &Instance,
    mut params: Map<String, Value>,
) -> Result<(String, String), Reply> {
    let mount = match params.remove("mount") {
        None | Some(Value::Null) => {
            let leaf = if instance_id.contains('/') || instance_id.starts_with('.') {
                instance.claim.clone()
            } else {
                instance_id.to_owned()
            };
            format!("{}/{leaf}", config.mount_root.trim_end_matches('/'))
        }
        Some(Value::String(m)) => m,
        Some(other) => {
            return Err(bad_request(format!(
                "parameter mount {other} is not a string"
            )));
        }
    };
    let container_dir = crate::vcap::normalize_dir(&mount, 0)
        .map_err(|p| {
            bad_request(format!(
                "parameter mount {mount:?} is not usable: {}",
                p.to_string().trim_start_matches("volume_mounts[0]: ")
            ))
        })?
        .to_owned();
    let mode = match params.remove("mode") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if m == "r" || m == "rw" => Some(m),
        Some(other) => {
            return Err(bad_request(format!(
                "parameter mode {other} is neither \"r\" nor \"rw\""
            )));
        }
    };
    let readonly = match params.remove("readonly") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(if b { "r" } else { "rw" }.to_owned()),
        Some(other) => {
            return Err(bad_request(format!(
                "parameter readonly {other} is not a boolean"
            )));
        }
    };
    let mode = match (mode, readonly) {
        (Some(m), Some(r)) if m != r => {
            return Err(bad_request(
                "parameters mode and readonly contradict each other",
            ));
        }
        (Some(m), _) | (None, Some(m)) => m,
        (None, None) => "rw".to_owned(),
    };
    if let Some(unknown) = params.keys().next() {
        return Err(bad_request(format!(
            "unknown parameter {unknown:?} (supported: mount, mode, readonly)"
        )));
    }
    Ok((container_dir, mode))
}

/// The bind response: what the platform puts into `VCAP_SERVICES`.
fn binding_response(claim: &str, b: &StoredBinding) -> Value {
    json!({
        "credentials": { "volume_id": claim },
        "volume_mounts": [{
            "driver": DRIVER,
            "container_dir": b.container_dir,
            "mode": b.mode,
            "device_type": "shared",
            "device": { "volume_id": claim, "mount_config": {} },
        }],
    })
}

async fn bind(
    State(state): State<Shared>,
    Path((instance_id, binding_id)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    match bind_inner(&state, &instance_id, &binding_id, &body).await {
        Ok(r) | Err(r) => r,
    }
}

fn missing_instance(instance_id: &str) -> Reply {
    osb_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("service instance {instance_id:?} does not exist"),
    )
}

async fn bind_inner(
    state: &BrokerState,
    instance_id: &str,
    binding_id: &str,
    body: &Bytes,
) -> Result<Reply, Reply> {
    check_ids(instance_id, Some(binding_id))?;
    let body = object_body(body)?;
    let service_id = required_str(&body, "service_id")?;
    let plan_id = required_str(&body, "plan_id")?;
    let app_guid = body
        .get("bind_resource")
        .and_then(|r| r.get("app_guid"))
        .or_else(|| body.get("app_guid"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            osb_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "RequiresApp",
                "volume bindings are for apps: bind_resource.app_guid is required",
            )
        })?;
    let params = parameters(&body)?;
    for attempt in 0..UPDATE_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt).await;
        }
        let instance = match state
            .store
            .lookup(instance_id)
            .await
            .map_err(|e| internal(&e))?
        {
            Lookup::Found(i) if !i.terminating => i,
            _ => return Err(missing_instance(instance_id)),
        };
        if instance.service_id != service_id || instance.plan_id != plan_id {
            return Err(bad_request(format!(
                "service instance {instance_id:?} is of service {:?} plan {:?}",
                instance.service_id, instance.plan_id
            )));
        }
        let (container_dir, mode) =
            bind_target(&state.config, instance_id, &instance, params.clone())?;
        let desired = StoredBinding {
            binding_id: binding_id.to_owned(),
            service_id: service_id.to_owned(),
            plan_id: plan_id.to_owned(),
            app_guid: app_guid.to_owned(),
            container_dir,
            mode,
        };
        if let Some(existing) = instance.bindings.get(binding_id) {
            return if *existing == desired {
                Ok(reply(
                    StatusCode::OK,
                    binding_response(&instance.claim, existing),
                ))
            } else {
                Err(osb_error(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "binding {binding_id:?} exists with other attributes (app {:?}, mount {:?}, mode {:?})",
                        existing.app_guid, existing.container_dir, existing.mode
                    ),
                ))
            };
        }
        match state
            .store
            .set_binding(&instance, binding_id, Some(&desired))
            .await
            .map_err(|e| internal(&e))?
        {
            Update::Done => {
                tracing::info!(%instance_id, %binding_id, app_guid, container_dir = %desired.container_dir, mode = %desired.mode, "service binding created");
                return Ok(reply(
                    StatusCode::CREATED,
                    binding_response(&instance.claim, &desired),
                ));
            }
            Update::Conflict => continue,
        }
    }
    Err(concurrency())
}

async fn fetch_binding(
    State(state): State<Shared>,
    Path((instance_id, binding_id)): Path<(String, String)>,
) -> Reply {
    match state.store.lookup(&instance_id).await {
        Ok(Lookup::Found(i)) if !i.terminating => match i.bindings.get(&binding_id) {
            Some(b) => reply(StatusCode::OK, binding_response(&i.claim, b)),
            None => osb_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("binding {binding_id:?} does not exist"),
            ),
        },
        Ok(_) => missing_instance(&instance_id),
        Err(e) => internal(&e),
    }
}

async fn binding_last_operation(
    State(state): State<Shared>,
    Path((instance_id, binding_id)): Path<(String, String)>,
) -> Reply {
    match state.store.lookup(&instance_id).await {
        Ok(Lookup::Found(i)) if !i.terminating && i.bindings.contains_key(&binding_id) => {
            reply(StatusCode::OK, json!({ "state": "succeeded" }))
        }
        Ok(_) => gone(),
        Err(e) => internal(&e),
    }
}

async fn unbind(
    State(state): State<Shared>,
    Path((instance_id, binding_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Reply {
    if let Err(r) = query_ids(&query) {
        return r;
    }
    for attempt in 0..UPDATE_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt).await;
        }
        let instance = match state.store.lookup(&instance_id).await {
            Ok(Lookup::Found(i)) => i,
            Ok(_) => return gone(),
            Err(e) => return internal(&e),
        };
        if !instance.bindings.contains_key(&binding_id) {
            return gone();
        }
        match state.store.set_binding(&instance, &binding_id, None).await {
            Ok(Update::Done) => {
                tracing::info!(%instance_id, %binding_id, "service binding removed");
                return reply(StatusCode::OK, json!({}));
            }
            Ok(Update::Conflict) => continue,
            Err(e) => return internal(&e),
        }
    }
    concurrency()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt as _;

    fn offline_client() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
        kube::Client::try_from(config).expect("client")
    }

    async fn status_of(router: Router, auth: Option<&str>, version: Option<&str>) -> (u16, Value) {
        let mut req = axum::http::Request::get("/v2/catalog");
        if let Some(a) = auth {
            let token = base64::engine::general_purpose::STANDARD.encode(a);
            req = req.header("authorization", format!("Basic {token}"));
        }
        if let Some(v) = version {
            req = req.header(VERSION_HEADER, v);
        }
        let response = router
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn invalid_configuration_answers_500_even_with_empty_credentials() {
        let router = broker_router(BrokerConfig::new("apps", "", ""), offline_client());
        let (status, body) = status_of(router, Some(":"), Some("2.17")).await;
        assert_eq!(status, 500);
        assert!(
            body["description"]
                .as_str()
                .unwrap()
                .contains("misconfigured")
        );
    }

    #[tokio::test]
    async fn guard_order_is_auth_then_version() {
        let router = || broker_router(BrokerConfig::new("apps", "u", "p"), offline_client());
        assert_eq!(status_of(router(), None, None).await.0, 401);
        assert_eq!(status_of(router(), Some("u:p"), None).await.0, 412);
        assert_eq!(status_of(router(), Some("u:p "), Some("2.17")).await.0, 401);
        let (status, body) = status_of(router(), Some("u:p"), Some("2.14")).await;
        assert_eq!(status, 200);
        assert_eq!(body["services"][0]["name"], "eirini-persi");
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
        assert!(same(b"", b""));
    }
}
