"""The Kubernetes API client, TokenReview, JWKS, the pod cache, Secrets and the ledger head
ConfigMap. With `ca/kube/watch`, the only code that talks to the API server.

Everything here goes through the official client. Callers get plain values
and meshca errors, never client objects or ApiExceptions.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError, MaxRetryError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from ca.auth.jwks import JwksFetcher
from ca.auth.tokenreview import ReviewCall
from ca.common.backoff import Backoff, Retrying, UniformRandom
from ca.common.clock import Clock, SystemClock
from ca.errors import AuthenticationError, ConfigError, UnavailableError
from ca.issuance.authority import SigningAuthority, cert_pem, load_pem_certificates
from ca.issuance.keys import load_private_key_pem, private_key_pem
from ca.issuance.selfsigned import RootFactory, check_trust_domain
from ca.ledger.checkpoint import Checkpoint

log = logging.getLogger(__name__)

CA_CERT_KEY = "ca-cert.pem"
CA_KEY_KEY = "ca-key.pem"
CA_SECRET_TYPE = "istio.io/ca-root"
TRANSPORT_ERRORS = (ApiException, HTTPError, OSError)


def api_client(kubeconfig: Path | None, in_cluster: bool) -> client.ApiClient:
    try:
        if kubeconfig is not None:
            configuration = client.Configuration()
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), client_configuration=configuration
            )
            return client.ApiClient(configuration)
        if in_cluster:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
    except (config.ConfigException, OSError, ValueError) as err:
        source = kubeconfig or "the in-cluster service account"
        raise ConfigError(f"cannot load Kubernetes credentials from {source} ({err})") from err
    raise ConfigError("no Kubernetes access configured; give --kubeconfig or run in a pod")


def transport_error_text(err: BaseException) -> str:
    """Why a request to the API server failed, in words. urllib3's own text is built from reprs
    of its pools and connections; the OS error under it says what happened."""
    if isinstance(err, ApiException):
        return f"HTTP {err.status} {err.reason}"
    if isinstance(err, MaxRetryError) and err.reason is not None:
        return transport_error_text(err.reason)
    for error in (err, err.__cause__):
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
    if isinstance(err, Urllib3Timeout):  # NewConnectionError is one too, but has its OS error
        return "timed out"
    return f"{type(err).__name__}: {err}"


def _unavailable(what: str, err: Exception) -> UnavailableError:
    detail = transport_error_text(err)
    return UnavailableError(
        f"{what} failed against the Kubernetes API ({detail}); the request can be retried",
        reason="kubernetes_unavailable",
    )


def tokenreview_call(api: client.ApiClient) -> ReviewCall:
    authentication = client.AuthenticationV1Api(api)

    def review(token: str, audiences: Sequence[str]) -> Mapping[str, Any]:
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=list(audiences)))
        try:
            result = authentication.create_token_review(body)
        except TRANSPORT_ERRORS as err:
            raise _unavailable("TokenReview", err) from err
        status: Mapping[str, Any] = (
            api.sanitize_for_serialization(result.status) or {}  # type: ignore[no-untyped-call]
        )
        return status

    return review


def _get_json(api: client.ApiClient, path: str) -> Mapping[str, Any]:
    method, url, headers, _, _ = api.param_serialize("GET", path, auth_settings=["BearerToken"])
    response = api.call_api(method, url, header_params=headers)
    body = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status < 300:
        raise ApiException(status=response.status, reason=response.reason)
    data = json.loads(body)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} did not return a JSON object")
    return data


def service_account_issuer(api: client.ApiClient) -> str:
    """The API server's service-account token issuer, from its OIDC discovery document."""
    try:
        discovery = _get_json(api, "/.well-known/openid-configuration")
    except TRANSPORT_ERRORS as err:
        raise ConfigError(
            f"cannot read the API server's OIDC discovery document ({err}); set --token-issuer"
        ) from err
    issuer = discovery.get("issuer")
    if not isinstance(issuer, str):
        raise ConfigError("the API server's OIDC discovery names no issuer; set --token-issuer")
    return issuer


def jwks_fetcher(api: client.ApiClient) -> JwksFetcher:
    return lambda: _get_json(api, "/openid/v1/jwks")


POD_WATCH_BACKOFF = Backoff(initial_s=0.5, maximum_s=30.0, jitter=0.5)
"""Between failed lists or watches of pods: 0.5 s doubling to 30 s."""

SECRET_BACKOFF = Backoff(initial_s=0.5, maximum_s=4.0, jitter=0.5)
"""Between failed reads of a Secret at start: 0.5 s doubling, 4 s at the fifth attempt."""


class PodCache:
    """Which pods exist, by namespace and name -> uid, kept current by a watch.

    A pod missing from the cache may simply be newer than the last event seen,
    so a miss is confirmed with a direct read before a token is refused.
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        watch_timeout_s: int = 240,
        backoff: Backoff = POD_WATCH_BACKOFF,
        random: UniformRandom = random.random,
        clock: Clock | None = None,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._clock = clock or SystemClock()
        self._pods: dict[tuple[str, str], str] = {}
        self._resource_version: str | None = None
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._watch_timeout_s = watch_timeout_s
        self._retrying = Retrying(backoff, random)
        self._thread = threading.Thread(target=self._run, name="pod-cache", daemon=True)

    def start(self, wait_s: float = 10.0) -> None:
        self._thread.start()
        self._synced.wait(wait_s)

    def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def check_bound_pod(self, namespace: str, name: str, uid: str) -> None:
        cached_uid = self._pods.get((namespace, name)) if self.synced else None
        if cached_uid is None:
            cached_uid = self._read_uid(namespace, name)
        if cached_uid != uid:
            raise AuthenticationError(
                f"the token is bound to pod {namespace}/{name} (uid {uid}), which no longer "
                "exists; a deleted pod's token is not accepted",
                reason="token_pod_gone",
            )

    def _read_uid(self, namespace: str, name: str) -> str | None:
        try:
            pod = self._core.read_namespaced_pod(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise _unavailable(f"reading pod {namespace}/{name}", err) from err
        except (HTTPError, OSError) as err:
            raise _unavailable(f"reading pod {namespace}/{name}", err) from err
        return pod.metadata.uid if pod.metadata else None

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._resource_version is None:
                    self._relist()
                self._watch_once()
            except ApiException as err:
                if err.status == 410:
                    log.info("pod watch resourceVersion expired; relisting")
                    self._resource_version = None
                    continue
                self._wait_after_failure(f"HTTP {err.status} {err.reason}")
            except Exception as err:
                self._wait_after_failure(transport_error_text(err))
            else:
                # A watch that ran to its end: the steps start over, after the first one, so that
                # a server that closes watches at once is not asked again in a tight loop.
                self._retrying.reset()
                self._clock.wait(self._stopping, self._retrying.next_delay_s())

    def _wait_after_failure(self, failure: str) -> None:
        if self._stopping.is_set():
            return  # stop() closed the watch: that is not a failure to report or retry
        delay_s = self._retrying.next_delay_s()
        log.warning("pod watch failed: %s; retrying in %.2fs", failure, delay_s)
        self._clock.wait(self._stopping, delay_s)

    def _relist(self) -> None:
        pods = self._core.list_pod_for_all_namespaces()
        self._pods = {
            (p.metadata.namespace, p.metadata.name): p.metadata.uid
            for p in pods.items
            if p.metadata and p.metadata.namespace and p.metadata.name and p.metadata.uid
        }
        self._resource_version = pods.metadata.resource_version if pods.metadata else None
        self._synced.set()

    def _watch_once(self) -> None:
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        for event in self._watch.stream(  # type: ignore[no-untyped-call]
            self._core.list_pod_for_all_namespaces,
            resource_version=self._resource_version,
            timeout_seconds=self._watch_timeout_s,
            allow_watch_bookmarks=True,
        ):
            self._apply(event)
            if self._stopping.is_set():
                return

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind, pod = event.get("type"), event.get("object")
        if kind == "ERROR" or pod is None:
            raise ApiException(status=410, reason="watch error event")
        meta = pod.metadata
        self._resource_version = meta.resource_version
        if kind == "BOOKMARK":
            return
        key = (meta.namespace, meta.name)
        if kind == "DELETED":
            self._pods.pop(key, None)
        else:
            self._pods[key] = meta.uid


def _decode_secret(data: Mapping[str, str | bytes], key: str, where: str) -> bytes:
    if key not in data:
        raise ConfigError(f"Secret {where} has no {key!r} entry; fix or delete the Secret")
    return base64.b64decode(data[key])


def _read_or_create_secret(
    core: client.CoreV1Api,
    *,
    namespace: str,
    name: str,
    secret_type: str,
    make: Callable[[], Mapping[str, bytes]],
    retries: int,
    sleep: Callable[[float], None],
    random: UniformRandom,
) -> tuple[Mapping[str, str | bytes], bool]:
    """The Secret's data (base64 values, as the API returns them), created from `make()` if the
    Secret does not exist. When several replicas start at once, one create wins (409 for the
    rest) and every replica then reads the winner's data."""
    where = f"{namespace}/{name}"
    retrying = Retrying(SECRET_BACKOFF, random)
    for attempt in range(retries):
        try:
            return core.read_namespaced_secret(name, namespace).data or {}, False
        except ApiException as err:
            if err.status != 404:
                if attempt + 1 == retries:
                    raise _unavailable(f"reading Secret {where}", err) from err
                sleep(retrying.next_delay_s())
                continue
        data: dict[str, str | bytes] = {k: base64.b64encode(v).decode() for k, v in make().items()}
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace), type=secret_type, data=data
        )
        try:
            core.create_namespaced_secret(namespace, body)
            return data, True
        except ApiException as err:
            if err.status != 409:
                raise _unavailable(f"creating Secret {where}", err) from err
    raise UnavailableError(
        f"could not read or create the Secret {where} after {retries} attempts; "
        "check meshca's RBAC for Secrets in that namespace",
        reason="kubernetes_unavailable",
    )


def load_or_create_root_secret(
    api: client.ApiClient,
    *,
    namespace: str,
    name: str,
    factory: RootFactory,
    retries: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    random: UniformRandom = random.random,
) -> tuple[SigningAuthority, bool]:
    """The self-signed root kept in a Secret, created on first start."""
    where = f"{namespace}/{name}"

    def make() -> Mapping[str, bytes]:
        authority = factory.create(source=f"Secret {where}")
        return {
            CA_CERT_KEY: cert_pem(authority.signing_cert).encode(),
            CA_KEY_KEY: private_key_pem(authority.signing_key),
        }

    data, created = _read_or_create_secret(
        client.CoreV1Api(api),
        namespace=namespace,
        name=name,
        secret_type=CA_SECRET_TYPE,
        make=make,
        retries=retries,
        sleep=sleep,
        random=random,
    )
    cert = load_pem_certificates(_decode_secret(data, CA_CERT_KEY, where), f"Secret {where}")[0]
    key = load_private_key_pem(_decode_secret(data, CA_KEY_KEY, where), f"Secret {where}")
    authority = SigningAuthority(
        signing_cert=cert, signing_key=key, chain=(), roots=(cert,), source=f"Secret {where}"
    )
    return check_trust_domain(authority, factory.trust_domain), created


LEDGER_KEY_SECRET = "meshca-ledger-key"
LEDGER_KEY_KEY = "ledger-key.pem"


def load_or_create_ledger_key_secret(
    api: client.ApiClient,
    *,
    namespace: str,
    make: Callable[[], bytes],
    name: str = LEDGER_KEY_SECRET,
    retries: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    random: UniformRandom = random.random,
) -> bytes:
    """The ledger key (PEM) that every CA replica signs checkpoints with, kept in a Secret."""
    data, _ = _read_or_create_secret(
        client.CoreV1Api(api),
        namespace=namespace,
        name=name,
        secret_type="Opaque",
        make=lambda: {LEDGER_KEY_KEY: make()},
        retries=retries,
        sleep=sleep,
        random=random,
    )
    return _decode_secret(data, LEDGER_KEY_KEY, f"{namespace}/{name}")


def read_ledger_key_secret(
    api: client.ApiClient, *, namespace: str, name: str = LEDGER_KEY_SECRET
) -> bytes | None:
    """The ledger key from its Secret, or None if there is none (for `audit verify`)."""
    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise _unavailable(f"reading Secret {namespace}/{name}", err) from err
    return _decode_secret(secret.data or {}, LEDGER_KEY_KEY, f"{namespace}/{name}")


LEDGER_HEAD_CONFIGMAP = "meshca-ledger-head"
LEDGER_HEAD_KEY = "head.json"


def ledger_head_publisher(
    api: client.ApiClient, *, namespace: str, name: str = LEDGER_HEAD_CONFIGMAP
) -> Callable[[Checkpoint], None]:
    """Keeps the latest signed ledger head in a ConfigMap, outside the ledger database."""
    core = client.CoreV1Api(api)

    def publish(checkpoint: Checkpoint) -> None:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            data={LEDGER_HEAD_KEY: checkpoint.to_json()},
        )
        try:
            core.replace_namespaced_config_map(name, namespace, body)
        except ApiException as err:
            if err.status != 404:
                raise _unavailable(f"updating ConfigMap {namespace}/{name}", err) from err
            core.create_namespaced_config_map(namespace, body)

    return publish


def read_ledger_head(
    api: client.ApiClient, *, namespace: str, name: str = LEDGER_HEAD_CONFIGMAP
) -> Checkpoint | None:
    try:
        config_map = client.CoreV1Api(api).read_namespaced_config_map(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise _unavailable(f"reading ConfigMap {namespace}/{name}", err) from err
    text = (config_map.data or {}).get(LEDGER_HEAD_KEY)
    return Checkpoint.from_json(text) if text else None
