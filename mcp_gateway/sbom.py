"""The software bill of materials: what is installed, as a CycloneDX 1.6 JSON document.

An assessor asks what is inside. The answer is read from the environment the gateway runs in, not from a list
kept by hand: every distribution ``importlib.metadata`` finds becomes a component with its name, version,
package URL (``pkg:pypi/name@version``) and the licences its metadata declares (``License-Expression``, else a
one-line ``License`` field, else the ``License ::`` classifiers; a licence pasted in full is not guessed at).
Given the wheelhouse it was installed from (``make wheelhouse``), each component also carries the sha256 of
its wheel, the digest the install lock pinned (not for a distribution installed from a folder or URL, which
did not come from that wheel). The gateway itself is the document's subject
(``metadata.component``); each component's dependencies are its declared requirements that apply here
(markers evaluated, extras not assumed) and are installed.

The document is built and serialised by the CycloneDX project's own library (``cyclonedx-python-lib``), which
also ships the schemas to validate it offline. Nothing here opens a connection.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
from collections.abc import Iterable, Mapping
from pathlib import Path

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.contrib.this.builders import this_component
from cyclonedx.model import HashAlgorithm, HashType
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import License, LicenseAcknowledgement
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, canonicalize_version, parse_wheel_filename

from mcp_gateway.errors import ConfigError

__all__ = ["GATEWAY", "build_sbom", "render_sbom", "wheel_digests"]

GATEWAY = "mcp-gateway"
# A one-line License field longer than this is licence text pasted into the field, not a licence's name.
_MAX_LICENSE_NAME = 100
_CHUNK = 1 << 20


def _key(name: str, version: str) -> tuple[str, str]:
    return canonicalize_name(name), canonicalize_version(version, strip_trailing_zero=False)


def wheel_digests(wheelhouse: Path) -> dict[tuple[str, str], tuple[str, ...]]:
    """The sha256 of every wheel in ``wheelhouse``, keyed by (canonical name, normalised version).

    Raises:
        ConfigError: the folder does not exist, holds no wheel, or holds a ``.whl`` whose name is not a wheel's
            (a file that could be mistaken for a component is refused, not skipped).
    """
    if not wheelhouse.is_dir():
        raise ConfigError(f"--wheelhouse {wheelhouse}: not a folder")
    digests: dict[tuple[str, str], tuple[str, ...]] = {}
    for path in sorted(wheelhouse.glob("*.whl")):
        try:
            name, version, _build, _tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename as exc:
            raise ConfigError(f"--wheelhouse {wheelhouse}: {path.name} is not a wheel's file name") from exc
        key = _key(name, str(version))
        digests[key] = (*digests.get(key, ()), _sha256(path))
    if not digests:
        raise ConfigError(f"--wheelhouse {wheelhouse}: no wheels in it")
    return digests


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _installed() -> dict[str, metadata.Distribution]:
    """Each installed distribution once, by canonical name: the first on ``sys.path`` wins, as it does on import."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = _field(dist.metadata, "Name")
        if name and dist.version:
            found.setdefault(canonicalize_name(name), dist)
    return found


def _field(meta: metadata.PackageMetadata, key: str) -> str:
    values = meta.get_all(key) or []
    return str(values[0]).strip() if values else ""


def _licenses(meta: metadata.PackageMetadata) -> list[License]:
    factory = LicenseFactory()
    declared = LicenseAcknowledgement.DECLARED
    expression = _field(meta, "License-Expression")
    if expression:
        return [factory.make_from_string(expression, license_acknowledgement=declared)]
    field = _field(meta, "License")
    if field and "\n" not in field and len(field) <= _MAX_LICENSE_NAME and field.upper() != "UNKNOWN":
        return [factory.make_from_string(field, license_acknowledgement=declared)]
    names = []
    for classifier in meta.get_all("Classifier") or []:
        parts = [part.strip() for part in str(classifier).split("::")]
        # "License :: OSI Approved" alone names no licence; the last part of a longer one does.
        if parts[0] == "License" and len(parts) > 2:
            names.append(parts[-1])
    return [factory.make_with_name(name, acknowledgement=declared) for name in dict.fromkeys(names)]


def _component(dist: metadata.Distribution, digests: Mapping[tuple[str, str], tuple[str, ...]]) -> Component:
    meta = dist.metadata
    name, version = _field(meta, "Name"), dist.version
    purl = PackageURL(type="pypi", name=canonicalize_name(name), version=version)
    # A distribution installed from a folder or a URL (an editable checkout, say) did not come from the wheel of
    # that name and version, so that wheel's digest would vouch for something it did not deliver.
    direct = dist.read_text("direct_url.json") is not None
    found = () if direct else digests.get(_key(name, version), ())
    hashes = [HashType(alg=HashAlgorithm.SHA_256, content=digest) for digest in found]
    return Component(
        type=ComponentType.APPLICATION if canonicalize_name(name) == GATEWAY else ComponentType.LIBRARY,
        name=name,
        version=version,
        purl=purl,
        bom_ref=purl.to_string(),
        description=_field(meta, "Summary") or None,
        licenses=_licenses(meta),
        hashes=hashes,
    )


def _requirements(dist: metadata.Distribution) -> Iterable[str]:
    """The canonical names ``dist`` requires here: markers evaluated with no extra chosen."""
    for line in dist.requires or []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue  # metadata we cannot read names no edge; the component itself is still listed
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            yield canonicalize_name(requirement.name)


def build_sbom(wheelhouse: Path | None = None) -> Bom:
    """The CycloneDX document of this environment, with wheel digests when ``wheelhouse`` is given.

    Raises:
        ConfigError: ``wheelhouse`` is not a folder of wheels, or the gateway is not installed here.
    """
    digests = wheel_digests(wheelhouse) if wheelhouse is not None else {}
    installed = _installed()
    if GATEWAY not in installed:
        raise ConfigError(f"{GATEWAY} is not installed in this environment: its metadata is what the SBOM reads")
    components = {name: _component(dist, digests) for name, dist in sorted(installed.items())}
    bom = Bom()
    bom.metadata.component = components[GATEWAY]
    bom.metadata.tools.components.add(this_component())
    bom.components.update(component for name, component in components.items() if name != GATEWAY)
    for name, dist in installed.items():
        needs = {target for target in _requirements(dist) if target in components and target != name}
        bom.register_dependency(components[name], [components[target] for target in sorted(needs)])
    return bom


def render_sbom(bom: Bom) -> str:
    """``bom`` as CycloneDX 1.6 JSON."""
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"
