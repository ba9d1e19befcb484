//! Realistic Eirini app pods and AdmissionReview bodies for the benchmarks.

use serde_json::{Value, json};

/// An Eirini app pod: StatefulSet name, the five cloudfoundry.org labels, ~40 env vars
/// including a VCAP_SERVICES with two volume bindings (about 8 KiB of review JSON).
pub fn eirini_app_pod() -> Value {
    let vcap = json!({
        "eirini-persi": [
            {"name": "data", "label": "eirini-persi", "credentials": {"volume_id": "pvc-data-7f3a"},
             "volume_mounts": [{"container_dir": "/var/vcap/data/data", "mode": "rw", "device_type": "shared", "device": {"volume_id": "pvc-data-7f3a", "mount_config": {}}}]},
            {"name": "shared-config", "label": "eirini-persi", "credentials": {"volume_id": "pvc-config-91bc"},
             "volume_mounts": [{"container_dir": "/var/vcap/data/config", "mode": "r", "device_type": "shared", "device": {"volume_id": "pvc-config-91bc", "mount_config": {}}}]}
        ],
        "p-mysql": [{"name": "db", "label": "p-mysql", "credentials": {"hostname": "10.0.0.12", "port": 3306, "name": "cf_7f3a", "username": "u7f3a", "password": "secret-password-123"}}]
    });
    let mut env = vec![
        json!({"name": "VCAP_SERVICES", "value": vcap.to_string()}),
        json!({"name": "VCAP_APPLICATION", "value": json!({"application_id": "4e7c8f2a-9d1b-4f3e-8a6c-2b5d7e9f1a3c", "application_name": "dora", "space_name": "dev", "organization_name": "org", "limits": {"mem": 1024, "disk": 1024}, "uris": ["dora.example.com"]}).to_string()}),
        json!({"name": "PORT", "value": "8080"}),
        json!({"name": "CF_INSTANCE_INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['controller.kubernetes.io/pod-name']"}}}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    for i in 0..35 {
        env.push(json!({"name": format!("APP_SETTING_{i:02}"), "value": format!("value-of-setting-number-{i}-for-the-app")}));
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "dora-dev-7f3a9c2e1b-0", "generateName": "dora-dev-7f3a9c2e1b-", "namespace": "eirini",
            "labels": {
                "cloudfoundry.org/app_guid": "4e7c8f2a-9d1b-4f3e-8a6c-2b5d7e9f1a3c",
                "cloudfoundry.org/guid": "4e7c8f2a-9d1b-4f3e-8a6c-2b5d7e9f1a3c",
                "cloudfoundry.org/process_type": "web",
                "cloudfoundry.org/source_type": "APP",
                "cloudfoundry.org/version": "b2e6f1d0-5c3a-4e7b-9f8d-1a2c3e4f5a6b",
                "controller-revision-hash": "dora-dev-7f3a9c2e1b-6d5f8c7b9",
                "statefulset.kubernetes.io/pod-name": "dora-dev-7f3a9c2e1b-0"
            },
            "annotations": {"cloudfoundry.org/application_name": "dora", "cloudfoundry.org/process_guid": "4e7c8f2a-web", "cloudfoundry.org/last_updated": "1795218000.0"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "dora-dev-7f3a9c2e1b", "uid": "0c4b2a1e-aaaa-bbbb-cccc-1234567890ab", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [{
                "name": "opi", "image": "registry.example.com/cloudfoundry/dora@sha256:5a9f0e7c1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a",
                "command": ["dumb-init", "--", "/lifecycle/launch"], "env": env,
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "resources": {"limits": {"memory": "1024Mi", "ephemeral-storage": "1024Mi"}, "requests": {"cpu": "120m", "memory": "1024Mi"}},
                "readinessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 0, "periodSeconds": 10},
                "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 0, "periodSeconds": 10, "failureThreshold": 4},
                "securityContext": {"runAsUser": 2000, "runAsNonRoot": true, "allowPrivilegeEscalation": false},
                "volumeMounts": [{"name": "kube-api-access-7x2lq", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]
            }],
            "automountServiceAccountToken": false, "dnsPolicy": "ClusterFirst", "enableServiceLinks": false,
            "restartPolicy": "Always", "schedulerName": "default-scheduler", "serviceAccountName": "eirini",
            "terminationGracePeriodSeconds": 30, "hostname": "dora-dev-7f3a9c2e1b-0",
            "securityContext": {"runAsUser": 2000},
            "volumes": [{"name": "kube-api-access-7x2lq", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]
        }
    })
}

/// A pod with `env` env vars in each of `containers` containers (large-pod benchmark).
pub fn large_pod(env: usize, containers: usize) -> Value {
    let mut pod = eirini_app_pod();
    let base = pod["spec"]["containers"][0].clone();
    let vcap = base["env"][0].clone();
    let mut cs = Vec::new();
    for c in 0..containers {
        let mut container = base.clone();
        container["name"] = json!(format!("c{c}"));
        let mut e = vec![vcap.clone()];
        e.extend(
            (1..env).map(|i| json!({"name": format!("VAR_{i:04}"), "value": format!("value-{i}")})),
        );
        container["env"] = Value::Array(e);
        cs.push(container);
    }
    pod["spec"]["containers"] = Value::Array(cs);
    pod
}

/// An AdmissionReview v1 CREATE request for `pod`.
pub fn review(pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"], "namespace": "eirini", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:statefulset-controller", "uid": "2d1f4a3c", "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap_or_default()
}
