#!/usr/bin/env python3
"""Regenerate the committed seed corpus (fuzz/corpus/<target>/seed-*).

Seeds are realistic inputs: Eirini app and staging pods with VCAP_SERVICES volume bindings (and
broken ones), AdmissionReview envelopes around them, and kubelet log streams. The fuzzers add
what they find to a scratch corpus, never here. Run from anywhere: `python3 fuzz/make_seeds.py`.
"""

import copy
import json
import os
import random
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
# Inputs the fuzzers found, kept as they were found (minimised): copied into the corpus as seeds.
FOUND = os.path.join(HERE, "found")

GUID = "4e7c8f2a-9d1b-4f3e-8a6c-2b5d7e9f1a3c"


def binding(name, claim, container_dir, mode="rw", label="eirini-persi", in_credentials=True):
    b = {
        "name": name,
        "label": label,
        "volume_mounts": [
            {
                "container_dir": container_dir,
                "mode": mode,
                "device_type": "shared",
                "device": {"volume_id": claim, "mount_config": {}},
            }
        ],
    }
    if in_credentials:
        b["credentials"] = {"volume_id": claim}
    return b


def vcap(*bindings, extra=True):
    v = {"eirini-persi": list(bindings)}
    if extra:
        v["p-mysql"] = [
            {
                "name": "db",
                "label": "p-mysql",
                "credentials": {"hostname": "10.0.0.12", "port": 3306, "username": "u7f3a", "password": "secret-password-123"},
            }
        ]
    return json.dumps(v, separators=(",", ":"))


def app_pod(vcap_value=None, command=("dumb-init", "--", "/lifecycle/launch"), image=None, name="dora-dev-7f3a9c2e1b-0"):
    env = [{"name": "PORT", "value": "8080"}]
    if vcap_value is not None:
        env.insert(0, {"name": "VCAP_SERVICES", "value": vcap_value})
    env.append({"name": "VCAP_APPLICATION", "value": json.dumps({"application_id": GUID, "application_name": "dora", "space_name": "dev"})})
    env.append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    container = {
        "name": "opi",
        "image": image or "registry.example.com/cloudfoundry/dora@sha256:5a9f0e7c1b3d5f7a9c1e3b5d7f9a1c3e",
        "env": env,
        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
        "resources": {"limits": {"memory": "1024Mi"}, "requests": {"cpu": "120m", "memory": "1024Mi"}},
        "securityContext": {"runAsUser": 2000, "runAsNonRoot": True, "allowPrivilegeEscalation": False},
        "volumeMounts": [{"name": "kube-api-access-7x2lq", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}],
    }
    if command is not None:
        container["command"] = list(command)
    sts = name.rsplit("-", 1)[0]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": sts + "-",
            "namespace": "eirini",
            "labels": {
                "cloudfoundry.org/app_guid": GUID,
                "cloudfoundry.org/guid": GUID,
                "cloudfoundry.org/process_type": "web",
                "cloudfoundry.org/source_type": "APP",
                "cloudfoundry.org/version": "b2e6f1d0-5c3a-4e7b-9f8d-1a2c3e4f5a6b",
                "statefulset.kubernetes.io/pod-name": name,
            },
            "annotations": {"cloudfoundry.org/application_name": "dora", "cloudfoundry.org/process_guid": GUID + "-web"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts, "uid": "0c4b2a1e-aaaa-bbbb-cccc-1234567890ab", "controller": True, "blockOwnerDeletion": True}
            ],
        },
        "spec": {
            "containers": [container],
            "automountServiceAccountToken": False,
            "restartPolicy": "Always",
            "serviceAccountName": "eirini",
            "securityContext": {"runAsUser": 2000},
            "volumes": [{"name": "kube-api-access-7x2lq", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
        },
    }


def pods():
    """(name, pod) pairs shared by the pod-handler targets."""
    two = vcap(
        binding("data", "pvc-data-7f3a", "/var/vcap/data/data"),
        binding("shared-config", "pvc-config-91bc", "/var/vcap/data/config", mode="r", in_credentials=False),
    )
    out = [("app-two-bindings", app_pod(two))]
    out.append(("app-no-vcap", app_pod(None)))
    out.append(("app-vcap-no-volumes", app_pod(json.dumps({"p-mysql": [{"name": "db", "credentials": {"uri": "mysql://x"}}]}))))

    p = app_pod(None)
    p["spec"]["containers"][0]["env"].insert(0, {"name": "VCAP_SERVICES", "valueFrom": {"secretKeyRef": {"name": "dora-env", "key": "VCAP_SERVICES"}}})
    out.append(("app-vcap-from-secret", p))
    p = app_pod(None)
    p["spec"]["containers"][0]["env"].insert(0, {"name": "VCAP_SERVICES", "valueFrom": {"configMapKeyRef": {"name": "dora-env", "key": "VCAP_SERVICES", "optional": True}}})
    out.append(("app-vcap-from-configmap", p))

    for label, value in [
        ("not-json", "{\"eirini-persi\": [ {\"volume_mounts\": "),
        ("not-object", "[1,2,3]"),
        ("label-not-list", json.dumps({"eirini-persi": {"volume_mounts": []}})),
        ("relative-dir", vcap(binding("data", "pvc-data-7f3a", "var/vcap/data"))),
        ("root-dir", vcap(binding("data", "pvc-data-7f3a", "/"))),
        ("dotdot-dir", vcap(binding("data", "pvc-data-7f3a", "/var/../etc"))),
        ("bad-mode", vcap(binding("data", "pvc-data-7f3a", "/data", mode="x"))),
        ("no-claim", json.dumps({"eirini-persi": [{"name": "d", "volume_mounts": [{"container_dir": "/d"}]}]})),
        ("claim-not-string", json.dumps({"eirini-persi": [{"name": "d", "credentials": {"volume_id": 7}, "volume_mounts": [{"container_dir": "/d"}]}]})),
        ("mounts-not-list", json.dumps({"eirini-persi": [{"name": "d", "volume_mounts": "nope"}]})),
        ("dup-dir", vcap(binding("a", "pvc-a", "/data"), binding("b", "pvc-b", "/data/"))),
        ("deep", "{\"eirini-persi\":[{\"volume_mounts\":" + "[" * 200 + "]" * 200 + "}]}"),
        ("blank", "   "),
    ]:
        out.append(("bad-vcap-" + label, app_pod(value)))

    # Claim already mounted (persi reuses it), and a dir taken by another volume.
    p = app_pod(vcap(binding("data", "pvc-data-7f3a", "/var/vcap/data/data")))
    p["spec"]["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": "pvc-data-7f3a"}})
    p["spec"]["containers"][0]["volumeMounts"].append({"name": "data", "mountPath": "/var/vcap/data/data/"})
    out.append(("app-claim-already-mounted", p))
    p = app_pod(vcap(binding("data", "pvc-data-7f3a", "/var/vcap/data/data")))
    p["spec"]["volumes"].append({"name": "scratch", "emptyDir": {}})
    p["spec"]["containers"][0]["volumeMounts"].append({"name": "scratch", "mountPath": "/var/vcap/data/data"})
    out.append(("app-dir-in-use", p))

    # Two containers binding the same claim; pod-level fsGroup and runAsGroup.
    p = app_pod(vcap(binding("data", "pvc-data-7f3a", "/var/vcap/data/data")))
    second = copy.deepcopy(p["spec"]["containers"][0])
    second["name"] = "worker"
    second["securityContext"]["runAsGroup"] = 1000
    p["spec"]["containers"].append(second)
    p["spec"]["securityContext"] = {"runAsUser": 2000, "runAsGroup": 3000}
    out.append(("app-two-containers-shared-claim", p))
    p = app_pod(vcap(binding("data", "pvc-data-7f3a", "/var/vcap/data/data")))
    p["spec"]["securityContext"] = {"fsGroup": 1000, "fsGroupChangePolicy": "Always"}
    out.append(("app-has-fsgroup", p))

    # Already mutated (idempotency markers).
    p = app_pod(two)
    p["metadata"]["annotations"].update({"eirinix.org/persi": "injected", "eirinix.org/ssh": "injected"})
    out.append(("app-marked", p))

    # rootfs: app pods on the rootfs image (with an init container), opted out, staging.
    p = app_pod(None, image="registry.example.com/cloudfoundry/cflinuxfs4:1.0")
    p["spec"]["initContainers"] = [{"name": "setup", "image": "registry.example.com:5000/cloudfoundry/cflinuxfs4@sha256:00ff", "command": ["/setup"]}]
    out.append(("app-rootfs-image", p))
    p = copy.deepcopy(p)
    p["metadata"]["annotations"]["eirinix.org/rootfs-opt-out"] = "true"
    out.append(("app-rootfs-opted-out", p))
    p = app_pod(None, image="registry.example.com/cloudfoundry/cflinuxfs4:2.0")
    p["metadata"]["labels"]["cloudfoundry.org/rootfs-version"] = "2.0"
    out.append(("app-rootfs-current", p))
    p = app_pod(two, name="dora-staging-x9z2k")
    p["metadata"]["labels"]["cloudfoundry.org/source_type"] = "STG"
    del p["metadata"]["ownerReferences"]
    p["spec"]["initContainers"] = [{"name": "downloader", "image": "eirini/recipe-downloader:1.0"}, {"name": "executor", "image": "registry.example.com/cloudfoundry/cflinuxfs4:1.0"}]
    out.append(("staging-pod", p))

    # ssh: no command (image entrypoint), already wrapped, no guid.
    out.append(("app-no-command", app_pod(None, command=None)))
    p = app_pod(None, command=("/eirinix/ssh/eirinix-sshd", "sshd", "--exec", "--", "dumb-init", "--", "/lifecycle/launch"))
    out.append(("app-already-wrapped", p))
    p = app_pod(None)
    del p["metadata"]["labels"]["cloudfoundry.org/guid"]
    out.append(("app-no-guid", p))

    # Known issue (reported): the pod already uses the names / path the ssh injector adds.
    p = app_pod(None)
    p["spec"]["volumes"].append({"name": "eirinix-ssh", "emptyDir": {}})
    out.append(("regression-ssh-volume-name-taken", p))
    p = app_pod(None)
    p["spec"]["initContainers"] = [{"name": "eirinix-ssh-install", "image": "busybox", "command": ["true"]}]
    out.append(("regression-ssh-init-container-name-taken", p))
    p = app_pod(None)
    p["spec"]["volumes"].append({"name": "tools", "emptyDir": {}})
    p["spec"]["containers"][0]["volumeMounts"].append({"name": "tools", "mountPath": "/eirinix/ssh"})
    out.append(("regression-ssh-mount-path-taken", p))

    # Found by persi_handler: a mount at the binding's directory naming the volume persi would
    # create ("persi-<claim>-<hash>"), with no such volume in the pod.
    p = app_pod(vcap(binding("data", "pvc-data-7f3a", "/data")))
    p["spec"]["containers"][0]["volumeMounts"].append({"name": "persi-pvc-data-7f3a-8721a22828b7", "mountPath": "/data"})
    out.append(("regression-persi-dangling-mount", p))

    # Minimal and odd shapes.
    out.append(("minimal", {"spec": {"containers": [{"name": "c"}]}}))
    out.append(("no-spec", {"metadata": {"name": "x", "labels": {"cloudfoundry.org/source_type": "APP"}}}))
    out.append(("empty-lists", {"metadata": {"labels": {}, "annotations": {}}, "spec": {"containers": [{"name": "c", "env": [], "volumeMounts": [], "command": []}], "volumes": [], "initContainers": []}}))
    p = app_pod(vcap(binding("data", "pvc-data-7f3a", "/data")))
    p["spec"]["containers"][0]["env"] += [{"name": "VAR_%04d" % i, "value": "value-%d" % i} for i in range(200)]
    out.append(("app-many-env", p))
    return out


def review(obj, operation="CREATE", uid="705ab4f5-6393-11e8-b7cc-42010a800002", old=None, kind=None, dry_run=False, api="admission.k8s.io/v1"):
    kind = kind or {"group": "", "version": "v1", "kind": "Pod"}
    req = {
        "uid": uid,
        "kind": kind,
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": kind,
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": (obj or old or {}).get("metadata", {}).get("name", "") if isinstance(obj or old, dict) else "",
        "namespace": "eirini",
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:statefulset-controller", "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    return {"apiVersion": api, "kind": "AdmissionReview", "request": req}


def reviews():
    ps = dict(pods())
    app = ps["app-two-bindings"]
    out = [
        ("create-app", review(app)),
        ("create-app-dry-run", review(app, dry_run=True)),
        ("create-no-command", review(ps["app-no-command"], dry_run=True)),
        ("create-rootfs", review(ps["app-rootfs-image"])),
        ("create-bad-vcap", review(ps["bad-vcap-relative-dir"])),
        ("create-vcap-from-secret", review(ps["app-vcap-from-secret"])),
        ("update-app", review(app, operation="UPDATE", old=app)),
        ("delete-app", review(None, operation="DELETE", old=app)),
        ("connect-exec", review({"kind": "PodExecOptions", "apiVersion": "v1", "command": ["sh"]}, operation="CONNECT", kind={"group": "", "version": "v1", "kind": "PodExecOptions"})),
        ("create-no-object", review(None)),
        ("create-deployment", review({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}, kind={"group": "apps", "version": "v1", "kind": "Deployment"})),
        ("create-not-a-pod", review({"spec": {"containers": "nope"}})),
        ("create-minimal", review(ps["minimal"])),
        ("v1beta1", review(app, api="admission.k8s.io/v1beta1")),
        ("empty-uid", review(app, uid="")),
        ("odd-uid", review(ps["minimal"], uid="uid \"with\" quotes \\ and \u00e9\u2603")),
    ]
    for name in ["regression-persi-dangling-mount", "regression-ssh-volume-name-taken", "regression-ssh-init-container-name-taken", "regression-ssh-mount-path-taken"]:
        out.append((name, review(ps[name], dry_run=True)))
    for verdict in ["deny", "error", "invalid", "unchanged"]:
        p = copy.deepcopy(ps["minimal"])
        p["metadata"] = {"annotations": {"fuzz.eirinix.org/verdict": verdict}}
        out.append(("verdict-" + verdict, review(p)))
    r = review(app)
    del r["request"]["uid"]
    out.append(("no-uid", r))
    out.append(("wrong-kind", {"apiVersion": "admission.k8s.io/v1", "kind": "ConfigMap", "request": None}))
    out.append(("null-request", {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": None}))
    return out


def logs_seed(stream, max_len=4096, flags=0, chunks=(64, 1, 200, 7), pod="dora-dev-7f3a9c2e1b-3", namespace="eirini", container="opi",
              labels=None, sd_id="tags@47450", cursor="", fallback="1714557600"):
    if labels is None:
        labels = {"cloudfoundry.org/app_guid": GUID, "cloudfoundry.org/process_type": "web", "cloudfoundry.org/source_type": "APP"}
    head = bytes([max_len & 0xFF, max_len >> 8, flags]) + bytes(chunks)
    fields = [pod, namespace, container, "\x1f".join(k + "=" + v for k, v in labels.items()), sd_id, cursor, fallback]
    return head + b"\x1e".join(f.encode() for f in fields) + b"\x1e" + stream


def logs():
    ts = "2024-05-01T10:00:00.123456789Z "
    lines = [
        ts + "Starting dora on port 8080",
        "2024-05-01T10:00:00.123456789Z second line, same nanosecond",
        "2024-05-01T10:00:01.5Z [APP/PROC/WEB/0] quotes \"x\" and ] and \\ in the message",
        "2024-05-01T10:00:02+02:00 offset timestamp",
        "no timestamp at all",
        "2024-05-01T10:00:03.000000001Z ",
        "",
    ]
    stream = ("\n".join(lines) + "\n").encode()
    utf8 = (ts + "h\u00e9llo w\u00f6rld \u2603 \U0001F600\n").encode()
    out = [
        ("app-lines", logs_seed(stream)),
        ("staging", logs_seed(stream, labels={"cloudfoundry.org/source_type": "STG", "cloudfoundry.org/guid": GUID}, pod="dora-staging-x9z2k")),
        ("long-line-split", logs_seed((ts + "x" * 100 + "\u00e9" * 20 + "\n").encode(), max_len=16, chunks=(3, 5, 1, 9))),
        ("utf8-boundary", logs_seed(utf8 * 3, max_len=9, flags=1)),
        ("invalid-utf8-raw", logs_seed(ts.encode() + b"bad \xff\xfe bytes \xc3\n", flags=0)),
        ("invalid-utf8-lossy", logs_seed(ts.encode() + b"bad \xff\xfe bytes \xc3\n", flags=1 | 2)),
        ("incomplete-last-line", logs_seed((ts + "no newline at the end").encode(), flags=4)),
        ("crlf", logs_seed((ts + "windows line\r\n" + ts + "next\r\n").encode())),
        ("resume-cursor", logs_seed(stream, cursor="2024-05-01T10:00:00.123456789Z 1 0")),
        ("odd-identity", logs_seed(stream, pod="", namespace="ns with space", container="c]\"\\", labels={"cloudfoundry.org/app_guid": "  ", "cloudfoundry.org/source_type": "weird type"}, sd_id="bad id")),
        ("year-zero", logs_seed(b"0000-01-01T00:30:00+01:00 before year 1\n9999-12-30T21:00:00Z late\n")),
        # Found by logs_format: a stored cursor whose offset takes it to year -1 in UTC.
        ("regression-cursor-offset-year-minus-one", logs_seed(stream, cursor="0000-01-01T00:00:00+01:00 80 0")),
        ("empty", logs_seed(b"")),
    ]
    return out


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if not isinstance(data, bytes):
        data = json.dumps(data, separators=(",", ":")).encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    for target in ["admission_decode", "json_scan", "persi_handler", "rootfs_webhook", "ssh_injector", "logs_format"]:
        shutil.rmtree(os.path.join(CORPUS, target), ignore_errors=True)
    for name, pod in pods():
        for target in ["persi_handler", "rootfs_webhook", "ssh_injector"]:
            write(target, name, pod)
    # Structured mode (input not starting with `{`): the bytes drive the pod generator.
    for n, size in [(1, 64), (2, 512), (3, 2048), (4, 8192)]:
        rng = random.Random(n)
        data = bytes([0x01]) + bytes(rng.randrange(256) for _ in range(size - 1))
        for target in ["persi_handler", "rootfs_webhook", "ssh_injector"]:
            write(target, "generated-%d" % n, data)
    for name, r in reviews():
        write("admission_decode", name, r)
    # Bodies that are not JSON AdmissionReviews at all.
    write("admission_decode", "not-json", b"<html>hello</html>")
    write("admission_decode", "empty", b"")
    write("admission_decode", "invalid-utf8", b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"\xff\xfe"}}')
    write("admission_decode", "deep", b"[" * 300 + b"]" * 300)
    for name, data in logs():
        write("logs_format", name, data)
    # The scanner: the reviews, and JSON with every escape, number form and nesting.
    for name, r in reviews()[:6]:
        write("json_scan", name, r)
    write("json_scan", "escapes", '{"name":"q\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00","labels":{"k\\"":"v"}}'.encode())
    write("json_scan", "numbers", b'{"count":-12,"items":[0,1.5,-0,1e9,18446744073709551615,-9223372036854775808,2E-3],"flag":true}')
    write("json_scan", "deep", b'{"items":' + b"[" * 120 + b"]" * 120 + b"}")
    write("json_scan", "skipped-strings", b'{"skipped":["plain","q\\" \\u00e9",null,"\\ud83d\\ude00"],"name":"x"}')
    # Found by json_scan: a struct read from a list asks past its end once per defaulted field.
    write("json_scan", "regression-past-the-end-of-a-list", b"[]]]]]")
    # An env entry named twice (persi's view skips the value of an entry named otherwise, so it
    # must refuse the second name and let the typed Pod decide).
    app = json.dumps(review(dict(pods())["app-two-bindings"]), separators=(",", ":"))
    port = '{"name":"PORT","value":"8080"}'
    assert port in app
    twice = '{"name":"PORT","value":%s,"name":"VCAP_SERVICES"}' % json.dumps(vcap(binding("d", "pvc-d", "/data")))
    write("admission_decode", "persi-env-named-twice", app.replace(port, twice).encode())
    for target in os.listdir(FOUND):
        for name in os.listdir(os.path.join(FOUND, target)):
            with open(os.path.join(FOUND, target, name), "rb") as f:
                write(target, name, f.read())


if __name__ == "__main__":
    main()
