"""Bearer-token verification: RFC 8725 checks, the principal cache, JWKS loading and the dev key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from mcp.server.auth.provider import AccessToken

from mcp_gateway.config import EgressSettings, IdentitySettings
from mcp_gateway.devkeys import DEV_JWKS_FILE, DEV_KEY_FILE, ensure_dev_key
from mcp_gateway.egress import EgressDeniedError, guarded_get
from mcp_gateway.errors import ConfigError, UnauthenticatedError
from mcp_gateway.identity import (
    GatewayAccessToken,
    JwkSet,
    JwtVerifier,
    Principal,
    load_jwks,
    parse_jwks,
    principal_from,
)

ISSUER = "https://idp.example.test"
AUDIENCE = "https://gateway.example.test/mcp"
NOW = 1_750_000_000
LEEWAY = 30
MAX_LIFETIME = 3600

# One key of each kind per test session; RSA generation is the slow part.
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
EC_KEY = ec.generate_private_key(ec.SECP256R1())
WEAK_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def public_jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, **extra}


JWKS = {
    "keys": [
        public_jwk(RSA_KEY, "rsa-1"),
        public_jwk(ED_KEY, "ed-1", alg="EdDSA", use="sig"),
        public_jwk(EC_KEY, "ec-1"),
    ]
}


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice@example.test",
        "roles": ["analyst", "support.read"],
        "catalog": "internal",
        "amr": ["pwd", "mfa"],
        "jti": "token-1",
        "iat": NOW,
        "exp": NOW + 300,
    }
    base.update(overrides)
    return base


def mint(
    *,
    omit: frozenset[str] = frozenset(),
    key: Any = RSA_KEY,
    alg: str = "RS256",
    kid: str | None = "rsa-1",
    headers: dict[str, Any] | None = None,
    **overrides: Any,
) -> str:
    payload = {name: value for name, value in claims(**overrides).items() if name not in omit}
    header: dict[str, Any] = {} if kid is None else {"kid": kid}
    header.update(headers or {})
    return jwt.encode(payload, key, algorithm=alg, headers=header)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: dict[str, Any], payload: bytes | dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def rsa_sign(message: bytes) -> bytes:
    return RSAAlgorithm(RSAAlgorithm.SHA256).sign(message, RSA_KEY)


def tampered(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64(json.dumps(claims(roles=['admin'])).encode())}.{signature}"


ALG_NONE = raw_token({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims(), lambda _: b"")
# Algorithm confusion, written out as in PyJWT's test_advisory.py: the RSA public key as an HMAC secret.
HS256_WITH_RSA_PUBKEY = raw_token(
    {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"},
    claims(),
    lambda message: hmac.new(RSA_PUBLIC_PEM, message, hashlib.sha256).digest(),
)
EMBEDDED_JWK = public_jwk(OTHER_RSA_KEY, "rsa-1")

HOSTILE_TOKENS = [
    # time
    pytest.param(mint(iat=NOW - 600, exp=NOW - LEEWAY), id="expired"),
    pytest.param(mint(nbf=NOW + LEEWAY + 1), id="not-yet-valid"),
    pytest.param(mint(iat=NOW + LEEWAY + 1, exp=NOW + 600), id="iat-in-future"),
    pytest.param(mint(exp=NOW + MAX_LIFETIME + LEEWAY + 1), id="lifetime-too-long"),
    pytest.param(mint(omit=frozenset({"iat"}), exp=NOW + MAX_LIFETIME + LEEWAY + 1), id="lifetime-too-long-no-iat"),
    pytest.param(mint(omit=frozenset({"exp"})), id="missing-exp"),
    pytest.param(mint(exp=str(NOW + 300)), id="exp-as-string"),
    pytest.param(mint(exp=True), id="exp-as-bool"),
    pytest.param(mint(exp=10**400), id="exp-huge-integer"),
    pytest.param(mint(nbf=None), id="nbf-null"),
    # issuer and audience
    pytest.param(mint(iss="https://evil.example.test"), id="wrong-issuer"),
    pytest.param(mint(omit=frozenset({"iss"})), id="missing-issuer"),
    pytest.param(mint(aud="https://other.example.test/mcp"), id="wrong-audience"),
    pytest.param(mint(aud=["https://other.example.test/mcp"]), id="audience-list-without-us"),
    pytest.param(mint(aud=[AUDIENCE, 7]), id="audience-list-with-non-string"),
    pytest.param(mint(aud=AUDIENCE + "/"), id="audience-near-miss"),
    pytest.param(mint(omit=frozenset({"aud"})), id="missing-audience"),
    # subject, catalog, roles, amr, jti
    pytest.param(mint(omit=frozenset({"sub"})), id="missing-sub"),
    pytest.param(mint(sub=""), id="empty-sub"),
    pytest.param(mint(sub="alice\nrole:admin"), id="control-char-sub"),
    pytest.param(mint(sub="alice\u202eevil"), id="bidi-override-sub"),
    pytest.param(mint(sub="a" * 257), id="sub-too-long"),
    pytest.param(mint(sub=42), id="sub-not-string"),
    pytest.param(mint(omit=frozenset({"catalog"})), id="missing-catalog"),
    pytest.param(mint(catalog="public"), id="bad-catalog"),
    pytest.param(mint(catalog=["internal"]), id="catalog-not-string"),
    pytest.param(mint(roles="analyst"), id="roles-not-list"),
    pytest.param(mint(roles=["analyst,admin"]), id="role-with-comma"),
    pytest.param(mint(roles=["admin\n"]), id="role-with-trailing-newline"),
    pytest.param(mint(roles=[""]), id="empty-role"),
    pytest.param(mint(roles=["r" * 65]), id="role-too-long"),
    pytest.param(mint(roles=[f"r{i}" for i in range(65)]), id="too-many-roles"),
    pytest.param(mint(roles=[1]), id="role-not-string"),
    pytest.param(mint(amr="pwd"), id="amr-not-list"),
    pytest.param(mint(jti=7), id="jti-not-string"),
    # algorithm and key selection
    pytest.param(ALG_NONE, id="alg-none"),
    pytest.param(HS256_WITH_RSA_PUBKEY, id="alg-hs256-with-public-key"),
    pytest.param(mint(alg="PS256"), id="alg-not-configured"),
    pytest.param(mint(key=ED_KEY, alg="EdDSA", kid="rsa-1"), id="eddsa-with-rsa-kid"),
    pytest.param(mint(key=RSA_KEY, alg="RS256", kid="ed-1"), id="rs256-with-ed25519-kid"),
    pytest.param(mint(key=EC_KEY, alg="ES256", kid="rsa-1"), id="es256-with-rsa-kid"),
    pytest.param(mint(kid="rsa-2"), id="unknown-kid"),
    pytest.param(mint(kid=None), id="missing-kid"),
    pytest.param(raw_token({"alg": "RS256", "kid": 1}, claims(), rsa_sign), id="kid-not-string"),
    pytest.param(mint(headers={"jku": "https://evil.example.test/jwks.json"}), id="jku-header"),
    pytest.param(mint(key=OTHER_RSA_KEY, headers={"jwk": EMBEDDED_JWK}), id="jwk-embedded-header"),
    pytest.param(mint(headers={"x5u": "https://evil.example.test/cert.pem"}), id="x5u-header"),
    pytest.param(mint(headers={"x5c": ["MIIB"]}), id="x5c-header"),
    pytest.param(mint(headers={"crit": ["exp"], "exp": NOW}), id="crit-header"),
    pytest.param(mint(headers={"typ": "dpop+jwt"}), id="foreign-typ"),
    # signature and encoding
    pytest.param(mint(key=OTHER_RSA_KEY), id="signed-by-other-key"),
    pytest.param(tampered(mint()), id="tampered-payload"),
    pytest.param(mint()[:-4], id="truncated-signature"),
    pytest.param(mint(bulk="x" * 9000), id="oversized"),
    pytest.param(
        raw_token({"alg": "RS256", "kid": "rsa-1"}, b'{"sub": "a", "sub": "b"}', rsa_sign), id="duplicate-claim"
    ),
    pytest.param(
        raw_token({"alg": "RS256", "kid": "rsa-1"}, b'["not", "an", "object"]', rsa_sign), id="payload-not-object"
    ),
    pytest.param(raw_token({"alg": "RS256", "kid": "rsa-1"}, b'{"exp": NaN}', rsa_sign), id="payload-nan"),
    pytest.param(mint() + "=", id="padded-signature"),
    pytest.param("é" + mint(), id="non-ascii"),
    pytest.param("not a jwt", id="not-a-jwt"),
    pytest.param(mint().rsplit(".", 1)[0], id="two-segments"),
    pytest.param(mint() + ".e30", id="four-segments"),
    pytest.param("", id="empty"),
]


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(JWKS), encoding="utf-8")
    return path


@pytest.fixture
def settings(jwks_file: Path) -> IdentitySettings:
    return IdentitySettings(
        issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_file, leeway=LEEWAY, max_token_lifetime=MAX_LIFETIME
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(settings: IdentitySettings, clock: FakeClock) -> JwtVerifier:
    return JwtVerifier(settings, load_jwks(settings), clock=clock)


# --- hostile tokens -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", HOSTILE_TOKENS)
async def test_hostile_token_has_no_principal(verifier: JwtVerifier, token: str) -> None:
    with pytest.raises(UnauthenticatedError):
        verifier.verify(token)
    assert await verifier.verify_token(token) is None


def test_refusal_detail_names_the_reason(verifier: JwtVerifier) -> None:
    with pytest.raises(UnauthenticatedError, match="alg"):
        verifier.verify(HS256_WITH_RSA_PUBKEY)
    with pytest.raises(UnauthenticatedError, match="jku"):
        verifier.verify(mint(headers={"jku": "https://evil.example.test/jwks.json"}))
    with pytest.raises(UnauthenticatedError, match="larger than"):
        verifier.verify(mint(bulk="x" * 9000))


def test_hs256_with_public_key_is_refused_even_if_settings_validation_were_bypassed(jwks_file: Path) -> None:
    loose = IdentitySettings.model_construct(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_file=jwks_file,
        jwks_url=None,
        algorithms=("RS256", "HS256", "none"),
        max_token_lifetime=MAX_LIFETIME,
        leeway=LEEWAY,
        max_token_bytes=8192,
    )
    verifier = JwtVerifier(loose, load_jwks(loose), clock=FakeClock())
    for token in (HS256_WITH_RSA_PUBKEY, ALG_NONE):
        with pytest.raises(UnauthenticatedError):
            verifier.verify(token)


def test_alg_pinned_by_the_jwk_must_match(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(RSA_KEY, "rsa-1", alg="RS384")]}), encoding="utf-8")
    settings = IdentitySettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=path, algorithms=("RS256", "RS384"))
    verifier = JwtVerifier(settings, load_jwks(settings), clock=FakeClock())
    with pytest.raises(UnauthenticatedError, match="does not fit"):
        verifier.verify(mint(alg="RS256"))
    assert verifier.verify(mint(alg="RS384")).subject == "alice@example.test"


# --- happy paths ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        pytest.param(RSA_KEY, "RS256", "rsa-1", id="rs256"),
        pytest.param(ED_KEY, "EdDSA", "ed-1", id="eddsa"),
        pytest.param(EC_KEY, "ES256", "ec-1", id="es256"),
    ],
)
async def test_valid_token_yields_its_principal(verifier: JwtVerifier, key: Any, alg: str, kid: str) -> None:
    token = mint(key=key, alg=alg, kid=kid, roles=["analyst", "analyst", "support.read"])

    principal = verifier.verify(token)

    assert principal == Principal(
        subject="alice@example.test",
        roles=("analyst", "support.read"),
        catalog="internal",
        amr=("pwd", "mfa"),
        token_id="token-1",
        issuer=ISSUER,
        expires_at=NOW + 300,
    )
    access = await verifier.verify_token(token)
    assert isinstance(access, GatewayAccessToken)
    assert principal_from(access) == principal
    assert access.client_id == "alice@example.test"
    assert access.subject == "alice@example.test"
    assert access.scopes == ["analyst", "support.read"]
    assert access.expires_at == NOW + 300
    assert access.resource == AUDIENCE
    assert access.claims == {"iss": ISSUER}


def test_optional_claims_may_be_absent(verifier: JwtVerifier) -> None:
    principal = verifier.verify(mint(omit=frozenset({"roles", "amr", "jti", "iat"}), catalog="partner"))

    assert (principal.roles, principal.amr, principal.token_id, principal.catalog) == ((), (), None, "partner")


def test_audience_list_containing_ours_is_accepted(verifier: JwtVerifier) -> None:
    assert verifier.verify(mint(aud=["https://other.example.test", AUDIENCE])).subject == "alice@example.test"


def test_explicit_access_token_type_is_accepted(verifier: JwtVerifier) -> None:
    assert verifier.verify(mint(headers={"typ": "at+jwt"})).subject == "alice@example.test"


def test_principal_from_refuses_an_access_token_it_did_not_issue() -> None:
    foreign = AccessToken(token="t", client_id="alice", scopes=[])

    with pytest.raises(UnauthenticatedError):
        principal_from(foreign)


# --- leeway edges ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"iat": NOW - 600, "exp": NOW - LEEWAY + 1}, id="exp-just-inside-leeway"),
        pytest.param({"nbf": NOW + LEEWAY}, id="nbf-at-leeway"),
        pytest.param({"iat": NOW + LEEWAY, "exp": NOW + LEEWAY + 60}, id="iat-at-leeway"),
        pytest.param({"exp": NOW + MAX_LIFETIME + LEEWAY}, id="lifetime-at-limit-plus-leeway"),
        pytest.param({"iat": NOW + 0.5, "exp": NOW + 300.5}, id="fractional-dates"),
    ],
)
def test_clock_skew_within_leeway_is_tolerated(verifier: JwtVerifier, overrides: dict[str, Any]) -> None:
    assert verifier.verify(mint(**overrides)).subject == "alice@example.test"


@pytest.mark.parametrize(
    ("overrides", "omit"),
    [
        # From a future nbf alone, this token would be good for the cap plus twice the leeway from now.
        pytest.param({"nbf": NOW + LEEWAY, "exp": NOW + 2 * LEEWAY + MAX_LIFETIME}, {"iat"}, id="future-nbf-no-iat"),
        pytest.param({"nbf": NOW - 600, "exp": NOW + MAX_LIFETIME}, set(), id="valid-long-before-iat"),
        pytest.param({"iat": NOW + LEEWAY, "exp": NOW + 2 * LEEWAY + MAX_LIFETIME}, set(), id="future-iat"),
        pytest.param({"exp": NOW + LEEWAY + MAX_LIFETIME + 1}, {"iat"}, id="no-iat-no-nbf"),
    ],
)
def test_lifetime_is_measured_from_the_earliest_of_iat_nbf_and_now(
    verifier: JwtVerifier, overrides: dict[str, Any], omit: set[str]
) -> None:
    with pytest.raises(UnauthenticatedError) as refused:
        verifier.verify(mint(omit=frozenset(omit), **overrides))
    assert refused.value.reason == "lifetime too long"


OFFSETS = st.none() | st.integers(-2 * MAX_LIFETIME, 2 * LEEWAY)


@hypothesis.settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(iat=OFFSETS, nbf=OFFSETS, exp=st.integers(-2 * LEEWAY, 2 * MAX_LIFETIME))
def test_a_token_is_accepted_exactly_when_its_dates_are_within_the_bounds(
    verifier: JwtVerifier, iat: int | None, nbf: int | None, exp: int
) -> None:
    # Offsets from the verifier's clock (NOW); an absent claim is omitted from the token.
    dates = {"iat": iat, "nbf": nbf, "exp": exp}
    token = mint(
        key=ED_KEY,
        alg="EdDSA",
        kid="ed-1",
        omit=frozenset(name for name, offset in dates.items() if offset is None),
        **{name: NOW + offset for name, offset in dates.items() if offset is not None},
    )
    present = [offset for offset in (iat, nbf) if offset is not None]
    start = min([*present, 0])
    expected = (
        exp + LEEWAY > 0  # not expired
        and all(offset <= LEEWAY for offset in present)  # neither issued nor valid only in the future
        and exp - start <= MAX_LIFETIME + LEEWAY  # the lifetime, from the earliest of iat, nbf and now
    )
    try:
        verifier.verify(token)
    except UnauthenticatedError:
        accepted = False
    else:
        accepted = True
    assert accepted is expected
    # What the cap means: however the dates are set, an accepted token is usable for at most the cap plus
    # the leeway from now, and at most that from each date it names.
    if accepted:
        assert exp <= MAX_LIFETIME + LEEWAY
        assert all(exp - offset <= MAX_LIFETIME + LEEWAY for offset in present)


def test_expiry_is_exact_at_exp_plus_leeway(settings: IdentitySettings) -> None:
    token = mint(iat=NOW - 600, exp=NOW - LEEWAY)
    keys = load_jwks(settings)

    assert JwtVerifier(settings, keys, clock=FakeClock(NOW - 1)).verify(token).expires_at == NOW - LEEWAY
    with pytest.raises(UnauthenticatedError, match="expired"):
        JwtVerifier(settings, keys, clock=FakeClock(NOW)).verify(token)


def test_zero_leeway_refuses_a_token_at_exp(jwks_file: Path) -> None:
    settings = IdentitySettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_file, leeway=0)
    verifier = JwtVerifier(settings, load_jwks(settings), clock=FakeClock(NOW + 300))

    with pytest.raises(UnauthenticatedError, match="expired"):
        verifier.verify(mint())


# --- cache ----------------------------------------------------------------------------------------------------


async def test_cached_principal_stops_verifying_once_the_clock_passes_exp(
    verifier: JwtVerifier, clock: FakeClock
) -> None:
    token = mint(exp=NOW + 60)
    assert verifier.verify(token).subject == "alice@example.test"
    clock.now = NOW + 60 + LEEWAY - 1
    assert verifier.verify(token).subject == "alice@example.test"

    clock.now = NOW + 60 + LEEWAY

    with pytest.raises(UnauthenticatedError, match="expired"):
        verifier.verify(token)
    assert await verifier.verify_token(token) is None


def test_cache_hit_returns_the_same_principal(verifier: JwtVerifier) -> None:
    token = mint()

    assert verifier.verify(token) is verifier.verify(token)


def test_bounded_cache_evicts_oldest_and_keeps_verifying(settings: IdentitySettings, clock: FakeClock) -> None:
    verifier = JwtVerifier(settings, load_jwks(settings), clock=clock, cache_size=2)
    tokens = [mint(jti=f"t{i}") for i in range(4)]

    principals = [verifier.verify(token) for token in tokens]

    assert [verifier.verify(token) for token in tokens] == principals


def test_refused_tokens_are_not_cached(verifier: JwtVerifier, clock: FakeClock) -> None:
    token = mint(nbf=NOW + 120)
    with pytest.raises(UnauthenticatedError, match="not yet valid"):
        verifier.verify(token)

    clock.now = NOW + 120

    assert verifier.verify(token).subject == "alice@example.test"


# --- JWKS loading ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param("[]", id="not-an-object"),
        pytest.param('{"keys": []}', id="no-keys"),
        pytest.param('{"keys": {}}', id="keys-not-a-list"),
        pytest.param(json.dumps({"keys": ["x"]}), id="key-not-an-object"),
        pytest.param(json.dumps({"keys": [{k: v for k, v in JWKS["keys"][0].items() if k != "kid"}]}), id="no-kid"),
        pytest.param(json.dumps({"keys": [public_jwk(RSA_KEY, "")]}), id="empty-kid"),
        pytest.param(json.dumps({"keys": [public_jwk(RSA_KEY, "a"), public_jwk(ED_KEY, "a")]}), id="duplicate-kid"),
        pytest.param(json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": b64(RSA_PUBLIC_PEM)}]}), id="symmetric-key"),
        pytest.param(
            json.dumps({"keys": [{**OKPAlgorithm.to_jwk(ED_KEY, as_dict=True), "kid": "p"}]}), id="private-key"
        ),
        pytest.param(json.dumps({"keys": [public_jwk(RSA_KEY, "e", use="enc")]}), id="encryption-key"),
        pytest.param(json.dumps({"keys": [public_jwk(RSA_KEY, "h", alg="HS256")]}), id="hs256-alg"),
        pytest.param(json.dumps({"keys": [{"kty": "RSA", "kid": "r", "n": "AQAB"}]}), id="broken-rsa-key"),
        pytest.param(json.dumps({"keys": [{"kty": "XYZ", "kid": "x"}]}), id="unknown-kty"),
        pytest.param(json.dumps({"keys": [public_jwk(WEAK_RSA_KEY, "s")]}), id="short-rsa-key"),
    ],
)
def test_invalid_jwks_is_a_config_error(document: str) -> None:
    with pytest.raises(ConfigError):
        parse_jwks(document)


def test_unreadable_jwks_file_is_a_config_error(tmp_path: Path) -> None:
    settings = IdentitySettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=tmp_path / "missing.json")

    with pytest.raises(ConfigError, match=r"missing\.json"):
        load_jwks(settings)


def test_jwks_url_is_fetched_through_the_given_getter() -> None:
    url = "https://idp.example.test/jwks.json"
    settings = IdentitySettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=url)
    fetched: list[str] = []

    def http_get(address: str) -> bytes:
        fetched.append(address)
        return json.dumps(JWKS).encode()

    keys = load_jwks(settings, http_get)

    assert fetched == [url]
    assert isinstance(keys, JwkSet)
    assert set(keys.keys) == {"rsa-1", "ed-1", "ec-1"}


def test_jwks_url_without_a_getter_or_failing_is_a_config_error() -> None:
    settings = IdentitySettings(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://idp.example.test/jwks.json")

    def refused(address: str) -> bytes:
        raise OSError("connection refused")

    def denied(address: str) -> bytes:
        raise ConfigError("egress to this origin is not allowed")

    with pytest.raises(ConfigError):
        load_jwks(settings)
    with pytest.raises(ConfigError):
        load_jwks(settings, refused)
    with pytest.raises(ConfigError):
        load_jwks(settings, denied)


def test_jwks_url_refused_by_the_egress_guard_is_a_config_error_naming_the_key() -> None:
    settings = IdentitySettings(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://idp.example.test/jwks.json")

    with pytest.raises(ConfigError, match=r"identity\.jwks_url") as failed:
        load_jwks(settings, lambda address: guarded_get(EgressSettings(allow=()), address))

    assert isinstance(failed.value.__cause__, ConfigError)
    assert isinstance(failed.value.__cause__.__cause__, EgressDeniedError)


# --- development keys -----------------------------------------------------------------------------------------


def test_dev_key_round_trip(tmp_path: Path) -> None:
    state_dir = tmp_path / ".mcp-gateway"

    key = ensure_dev_key(state_dir)
    settings = IdentitySettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=state_dir / DEV_JWKS_FILE)
    token = key.mint("dev-user", roles=["analyst"], catalog="partner", issuer=ISSUER, audience=AUDIENCE, amr=["pwd"])
    principal = JwtVerifier(settings, load_jwks(settings)).verify(token)

    assert (principal.subject, principal.roles, principal.catalog, principal.amr) == (
        "dev-user",
        ("analyst",),
        "partner",
        ("pwd",),
    )
    assert stat.S_IMODE((state_dir / DEV_KEY_FILE).stat().st_mode) == 0o600
    assert '"d"' not in (state_dir / DEV_JWKS_FILE).read_text(encoding="utf-8")


def test_dev_key_is_reused_on_the_second_call(tmp_path: Path) -> None:
    first = ensure_dev_key(tmp_path)
    pem = (tmp_path / DEV_KEY_FILE).read_bytes()

    second = ensure_dev_key(tmp_path)

    assert second.kid == first.kid
    assert (tmp_path / DEV_KEY_FILE).read_bytes() == pem
    token = first.mint("u", roles=[], catalog="internal", issuer=ISSUER, audience=AUDIENCE)
    settings = IdentitySettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=second.jwks_path)
    assert JwtVerifier(settings, load_jwks(settings)).verify(token).subject == "u"


def test_dev_minted_hostile_headers_and_claims_are_still_refused(tmp_path: Path) -> None:
    key = ensure_dev_key(tmp_path)
    settings = IdentitySettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=key.jwks_path)
    verifier = JwtVerifier(settings, load_jwks(settings), clock=FakeClock())
    common: dict[str, Any] = {"roles": [], "catalog": "internal", "issuer": ISSUER, "audience": AUDIENCE, "now": NOW}

    for token in (
        key.mint("u", headers={"jku": "https://evil.example.test/"}, **common),
        key.mint("u", ttl=MAX_LIFETIME * 2, **common),
        key.mint("u", extra_claims={"catalog": "everything"}, **common),
    ):
        with pytest.raises(UnauthenticatedError):
            verifier.verify(token)


def test_dev_key_file_that_is_not_a_key_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / DEV_KEY_FILE).write_text("not a key", encoding="utf-8")

    with pytest.raises(ConfigError):
        ensure_dev_key(tmp_path)


def test_dev_key_file_with_loose_mode_is_tightened(tmp_path: Path) -> None:
    ensure_dev_key(tmp_path)
    (tmp_path / DEV_KEY_FILE).chmod(0o644)

    ensure_dev_key(tmp_path)

    assert stat.S_IMODE((tmp_path / DEV_KEY_FILE).stat().st_mode) == 0o600
