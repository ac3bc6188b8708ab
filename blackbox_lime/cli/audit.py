"""``blackbox-lime audit run | summary | verify | report``: a study's audit, serial or on Dask."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from blackbox_lime.cli.common import (
    plan_text,
    query_plan,
    CONFIG_OPTIONS,
    EXIT_BUDGET,
    EXIT_CASES_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    UserError,
    adapter_from_options,
    burned_in_policy,
    check_calibration,
    config_from_options,
    explainer_and_target,
    model_key,
    model_record,
    redact_logs,
)


def run_audit_command(a: argparse.Namespace) -> int:
    """audit run | summary | verify | report."""
    from blackbox_lime.audit.store import StoreError

    if a.audit_command is None:
        raise UserError("Use: blackbox-lime audit run SOURCE --model MODEL --out DIR (or audit summary|verify|report DIR).")
    try:
        if a.audit_command == "run":
            return run_audit(a)
        if a.audit_command == "plan":
            return plan_audit(a)
        return _audit_read(a)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def _audit_config(a: argparse.Namespace, cfg: Any, model: dict[str, Any], explainer: Any,
                  burned_in: str) -> dict[str, Any]:
    """What an audit's maps depend on, by option name: a resume must give the same values."""
    from blackbox_lime.outputs import file_sha256

    from blackbox_lime.audit.pacs import is_pacs_url

    config: dict[str, Any] = {"source": a.source if is_pacs_url(a.source) else str(Path(a.source).resolve()),
                              "--model" if a.endpoint is None else "--endpoint": model}
    for option, field in CONFIG_OPTIONS.items():
        config[f"--{option.replace('_', '-')}"] = getattr(cfg, field)
    config.update({"--seed": a.seed, "--target": a.target, "--threshold": a.threshold, "--frame": a.frame,
                   **({"--burned-in": burned_in} if burned_in != "warn" else {}),
                   "--output-kind": a.output_kind,
                   "--mae": None if explainer.mae is None else file_sha256(explainer.mae.path),
                   "--bank": None if a.bank is None else file_sha256(a.bank),
                   "--calibration": None if a.calibration is None else file_sha256(a.calibration)})
    return config


def run_audit(a: argparse.Namespace) -> int:
    """Explain and flag every case of a study, resumably; write the report and the provenance manifest."""
    import secrets

    from blackbox_lime.audit.answers import StoredAdapter
    from blackbox_lime.audit.provenance import write_provenance
    from blackbox_lime.audit.report import write_report
    from blackbox_lime.audit.runner import AuditRunner
    from blackbox_lime.audit.source import source_root
    from blackbox_lime.audit.store import STORE_NAME, AuditStore, config_difference
    from blackbox_lime.explainer import _progress
    from blackbox_lime.image_io import DEFAULT_MAX_PIXELS
    from blackbox_lime.outputs import check_writable

    if a.out is None:
        raise UserError("--out is required: the audit folder (rerun the same command to resume).")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {a.out} is a file; give a folder for the audit (new, or one to resume).")
    store_path = out / STORE_NAME
    resuming = store_path.is_file()
    if out.is_dir() and not resuming and any(out.iterdir()):
        raise UserError(f"--out {a.out} holds other files and no audit; give a new or empty folder.")
    if a.budget is not None and a.budget < 1:
        raise UserError(f"--budget must be an integer >= 1. Got {a.budget} instead.")
    if a.workers is not None and a.workers < 1:
        raise UserError(f"--workers must be an integer >= 1. Got {a.workers} instead.")
    budget, a.budget = a.budget, None  # the audit's budget spans resumes: the store keeps the count
    old = AuditStore.open(store_path) if resuming else None  # read-write: closing it leaves no -wal/-shm behind
    try:
        salt = old.get("salt") if old is not None else secrets.token_hex(16)
        pacs, cases = _study_cases(a, salt, old)
        cfg = config_from_options(a)
        adapter = adapter_from_options(a)  # before anything is written: a bad model or endpoint leaves nothing behind
        redact_logs(adapter)
        burned_in = burned_in_policy(a, adapter)  # auto resolved: what the maps and the config depend on
        stack = contextlib.ExitStack()  # the Dask client and cluster, if any: closed before the adapter
        try:
            explainer, target = explainer_and_target(a, adapter, cfg)
            model = model_record(a, adapter)
            if a.calibration is not None:
                check_calibration(a, model)
            meta = getattr(adapter, "meta", None)
            if "endpoint" in model and meta is not None:  # what the endpoint said it serves, for the provenance
                model["endpoint"]["metadata"] = {
                    "name": meta.name, "input": [meta.input_name, meta.input_datatype, list(meta.input_shape)],
                    "output": [meta.output_name, list(meta.output_shape or [])]}
            config = _audit_config(a, cfg, model_key(model), explainer, burned_in)
            if old is not None:
                diff = config_difference(old.config, config)
                if diff is not None:
                    raise UserError(f"{a.out} holds an audit started with other options: {diff}. Resume it with the "
                                    "same options, or give a new --out.")
                then = [c.id for c in old.cases()]
                if then != [c.id for c in cases]:
                    raise UserError(f"The source changed since the audit in {a.out} started: {len(then)} cases then, "
                                    f"{len(cases)} now. Audit the changed study in a new --out.")
                old.close()
                old = None
            client = stack.enter_context(_cluster(a))  # before any file: a bad scheduler leaves nothing behind
            fetch, stow = _pacs_io(a, stack)  # likewise a bad --stow URL or --pacs-auth file
            check_writable(out)
            if resuming:
                store = AuditStore.open(store_path)
            elif pacs is not None:
                store = AuditStore.create(store_path, config, cases, {
                    "salt": salt, "model": model, "source_kind": "pacs", "root": str(out.resolve()),
                    "pacs": {"host": pacs.host, "studies": pacs.studies, "skipped": pacs.skipped}})
            else:
                kind = "folder" if Path(a.source).is_dir() else "manifest"
                store = AuditStore.create(store_path, config, cases, {
                    "salt": salt, "model": model, "source_kind": kind,
                    "root": str(source_root(a.source).resolve())})  # the store stays on the site: outputs name the study
            with store:
                if a.study_name is not None or not resuming:
                    store.put("study_name", a.study_name or "study")
                store.put("budget", budget)
                store.put("price_per_1k_images", _price(a))
                stored = StoredAdapter(adapter, store, budget)
                explainer.adapter = stored  # every query of the audit goes through the store
                counts = store.counts()
                if resuming and not a.quiet:
                    print(f"resuming: {counts['done']} of {len(cases)} cases done"
                          + (f", {counts['failed']} failed (tried again)" if counts["failed"] else ""), file=sys.stderr)
                bar = _progress(len(cases), not a.quiet, unit="case")
                if hasattr(bar, "update"):
                    bar.update(counts["done"])

                def progress(case: Any, state: str) -> None:
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(sent=store.totals()["sent"], failed=store.counts()["failed"], refresh=False)
                    bar.update(1)

                try:
                    if client is not None:
                        from blackbox_lime.audit.cluster import run_on_cluster

                        settings = _cluster_settings(a, cfg, target, salt, budget, burned_in)
                        result = run_on_cluster(client, out, store, settings, progress)
                    else:
                        result = AuditRunner(out, store, stored, explainer,
                                             root=out if pacs is not None else source_root(a.source), seed=a.seed,
                                             target=target, frame=a.frame, salt=salt, threshold=a.threshold,
                                             max_pixels=a.max_pixels or DEFAULT_MAX_PIXELS,
                                             burned_in=burned_in, progress=progress, fetch=fetch, stow=stow).run()
                except KeyboardInterrupt:
                    bar.close()  # before the message, so the bar does not overwrite it
                    print(f"blackbox-lime: interrupted; every answered query is stored. Run the same command to "
                          f"resume the audit in {a.out}.", file=sys.stderr)
                    return 130
                finally:
                    bar.close()
                store.put("updated", time.time())
                if a.workers is None and a.scheduler is None:  # one adapter: the request size it settled on
                    c = stored.counters()
                    store.put("request_size", [c["request_size"], c["max_batch"]] if c["refused_for_size"] else None)
                report = write_report(out, store)
                digest = write_provenance(out, store)
                totals = store.totals()
                unstored = [(c.id, (c.record.stow or {}).get("reason", "")) for c in store.cases(states=("done",))
                            if a.stow is not None and c.record and (c.record.stow or {}).get("state") == "failed"]
        finally:
            stack.close()
            adapter.close()
    finally:
        if old is not None:
            old.close()
    if a.json:
        from blackbox_lime.audit.report import study_summary

        with AuditStore.open(store_path, readonly=True) as ro:
            print(json.dumps(study_summary(ro)["study"]))
    for case_id, reason in result.failures[:10]:
        print(f"blackbox-lime: case {case_id} failed: {reason}", file=sys.stderr)
    print(f"{a.out}: {result.done} of {len(cases)} cases explained, {result.failed} failed, {result.pending} pending; "
          f"{totals['sent']} images sent in all ({totals['reused']} answers reused from the store). Report: {report}. "
          f"provenance.json SHA-256 {digest}.", file=sys.stderr)
    if unstored:
        print(f"blackbox-lime: the maps of {len(unstored)} case(s) were not stored to PACS: {unstored[0][1]} Rerun the "
              "same command (with a --stow that works) to store them; no query is sent again.", file=sys.stderr)
    if result.stopped is not None:
        print(f"blackbox-lime: stopped: {result.stopped}", file=sys.stderr)
        return EXIT_BUDGET
    return EXIT_CASES_FAILED if result.failed or unstored else EXIT_OK


def _price(a: argparse.Namespace) -> float | None:
    """The endpoint profile's [limits] price_per_1k_images (None: not set, or a local model)."""
    if a.endpoint is None:
        return None
    from blackbox_lime.adapters.profile import EndpointProfile

    price = EndpointProfile.from_toml(a.endpoint, a.allow_insecure_http).limits.get("price_per_1k_images")
    return None if price is None else float(price)


def plan_audit(a: argparse.Namespace) -> int:
    """What ``audit run`` with these options would send at most, and cost; with --out of an audit begun, what its
    resume would send (its pending and failed cases, within what is left of its budget). Nothing is sent to the
    model and nothing is written; a DICOMweb source is searched (metadata only) to count its cases."""
    import secrets

    from blackbox_lime.audit.store import STORE_NAME, AuditStore

    old = None
    if a.out is not None and (Path(a.out) / STORE_NAME).is_file():
        old = AuditStore.open(Path(a.out) / STORE_NAME, readonly=True)
    try:
        salt = old.get("salt") if old is not None else secrets.token_hex(16)
        cases = _study_cases(a, salt, old)[1]
        done, sent, budget = 0, 0, a.budget
        if old is not None:
            done, sent = old.counts()["done"], old.totals()["sent"]
            if budget is None and old.get("budget") is not None:
                budget = int(old.get("budget"))
        cfg = config_from_options(a)
        left = None if budget is None else max(0, budget - sent)
        doc = query_plan(a, cfg, len(cases) - done, left)
    finally:
        if old is not None:
            old.close()
    doc.update(cases=len(cases), done=done, sent_before=sent)
    if a.json:
        print(json.dumps(doc))
    else:
        what = (f"{len(cases)} case(s)" if old is None else
                f"{len(cases) - done} of {len(cases)} case(s) still to explain ({sent:,} images sent before)")
        print(plan_text(doc, what))
    return EXIT_OK


def _pacs_auth(a: argparse.Namespace) -> Any:
    from blackbox_lime.adapters import ConfigError
    from blackbox_lime.audit.pacs import PacsAuth

    if a.pacs_auth is None:
        return None
    try:
        auth = PacsAuth.from_toml(a.pacs_auth)
        auth.secrets()  # a missing variable or a bad token file is named before anything is written
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    return auth


def _study_cases(a: argparse.Namespace, salt: str, old: Any) -> tuple[Any, list[Any]]:
    """The study's cases: (its DICOMweb source or None, the cases), from the PACS, the folder or the manifest."""
    from blackbox_lime.audit.source import SourceError, read_source

    pacs = _pacs_source(a, salt, old)
    try:
        return pacs, pacs.cases if pacs is not None else read_source(a.source, salt)
    except SourceError as exc:
        raise UserError(f"{exc} Nothing was written.") from None


def _pacs_source(a: argparse.Namespace, salt: str, old: Any) -> Any:
    """A DICOMweb source's cases (read from the store on a resume: the list is fixed when the audit starts), else
    None for a folder or manifest."""
    from blackbox_lime.audit.pacs import PacsCases, PacsError, is_pacs_url, read_pacs

    if a.pacs_auth is not None and not is_pacs_url(a.source) and a.stow is None:
        raise UserError("--pacs-auth is for a DICOMweb source or --stow; the source is a folder or manifest.")
    if not is_pacs_url(a.source):
        return None
    if a.workers is not None or a.scheduler is not None:
        raise UserError("A DICOMweb source is audited in one process for now: drop --workers / --scheduler (the "
                        "retrieval of the next cases overlaps with the explanation already).")
    if old is not None and old.get("source_kind") == "pacs":
        p = old.get("pacs") or {}
        return PacsCases(old.cases(), p.get("skipped", []), p.get("studies", []), p.get("host", ""))
    try:
        return read_pacs(a.source, salt, _pacs_auth(a), a.allow_insecure_http)
    except PacsError as exc:
        raise UserError(f"{exc} Nothing was written.") from None


def _pacs_io(a: argparse.Namespace, stack: contextlib.ExitStack) -> tuple[Any, Any]:
    """(fetch, stow) for the runner: WADO-RS retrieval of a PACS source's cases, STOW-RS of the maps."""
    from blackbox_lime.audit.pacs import Pacs, PacsError, is_pacs_url, pacs_reference, parse_pacs_url

    fetch = stow = None
    auth = _pacs_auth(a) if (is_pacs_url(a.source) or a.stow) else None
    try:
        if is_pacs_url(a.source):
            source = stack.enter_context(Pacs(parse_pacs_url(a.source, a.allow_insecure_http).root, auth,
                                              allow_insecure_http=a.allow_insecure_http))
            fetch = lambda case: source.retrieve(*pacs_reference(case.image))  # noqa: E731
        if a.stow is not None:
            root, study = _dicomweb_root(a.stow)
            target = stack.enter_context(Pacs(root, auth, allow_insecure_http=a.allow_insecure_http))
            stow = lambda files: target.store(files, study)  # noqa: E731
    except PacsError as exc:
        raise UserError(str(exc)) from None
    return fetch, stow


def _dicomweb_root(url: str) -> tuple[str, str | None]:
    """--stow URL: a DICOMweb root (the maps go to POST ROOT/studies), or a study under it (POST ROOT/studies/UID,
    which a server refuses for maps of another study)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    cut = next((i for i, s in enumerate(segments) if s in ("studies", "series", "instances")), len(segments))
    study = segments[cut + 1] if len(segments) > cut + 1 and segments[cut] == "studies" else None
    return urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(segments[:cut]), "", "")).rstrip("/"), study


def _cluster_settings(a: argparse.Namespace, cfg: Any, target: Any, salt: str, budget: int | None,
                      burned_in: str) -> Any:
    """What every worker needs to rebuild the adapter and the explainer."""
    from blackbox_lime.adapters import is_url
    from blackbox_lime.audit.cluster import WorkerSettings
    from blackbox_lime.audit.source import source_root
    from blackbox_lime.image_io import DEFAULT_MAX_PIXELS

    return WorkerSettings(
        model=None if a.model is None else (a.model if is_url(a.model) else str(Path(a.model).resolve())),
        endpoint=None if a.endpoint is None else str(Path(a.endpoint).resolve()), max_batch=a.max_batch,
        output_kind=a.output_kind, allow_insecure_http=a.allow_insecure_http, device=a.device, config=cfg,
        mae=None if a.mae is None else str(Path(a.mae).resolve()),
        bank=None if a.bank is None else str(Path(a.bank).resolve()), seed=a.seed, target=target,
        threshold=a.threshold, frame=a.frame, salt=salt, root=str(source_root(a.source).resolve()), budget=budget,
        concurrency=a.concurrency or 1, max_pixels=a.max_pixels or DEFAULT_MAX_PIXELS, burned_in=burned_in)


@contextlib.contextmanager
def _cluster(a: argparse.Namespace) -> Iterator[Any]:
    """audit run --workers N | --scheduler ADDR: the Dask client (None for a serial audit), connected before
    anything is written, so an unreachable or foreign scheduler leaves no store behind."""
    if a.workers is None and a.scheduler is None:
        yield None
        return
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UserError("--workers and --scheduler need Dask: pip install 'blackbox-lime[audit]'.") from None
    from blackbox_lime.audit.cluster import ClusterError, cluster_security, connect

    quiet = logging.INFO if a.verbose else logging.ERROR
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core", "distributed.http"):
        logging.getLogger(name).setLevel(quiet)
    try:
        security = cluster_security(a.scheduler, a.dask_tls_ca, a.dask_tls_cert, a.dask_tls_key)
        client, cluster = connect(a.scheduler, security, a.workers, quiet)
    except ClusterError as exc:
        raise UserError(str(exc)) from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _audit_read(a: argparse.Namespace) -> int:
    """audit summary | verify | report DIR."""
    from blackbox_lime.audit.store import STORE_NAME, AuditStore

    out = Path(a.dir)
    if a.audit_command == "verify":
        from blackbox_lime.audit.provenance import verify

        if not out.is_dir():
            raise UserError(f"{a.dir} is not an audit folder (audit run --out).")
        ok, message, _ = verify(out, None if a.source is None else Path(a.source))
        print(f"{a.dir}: {message}" if ok else f"blackbox-lime: verify: {message}", file=sys.stdout if ok else sys.stderr)
        return EXIT_OK if ok else EXIT_INTERNAL
    with AuditStore.open(out / STORE_NAME, readonly=a.audit_command == "summary") as store:
        if a.audit_command == "report":
            from blackbox_lime.audit.provenance import refresh_report_hashes
            from blackbox_lime.audit.report import write_report

            path = write_report(out, store)
            refresh_report_hashes(out)
            print(f"{path}", file=sys.stderr)
            return EXIT_OK
        from blackbox_lime.audit.report import study_summary

        summary = study_summary(store)
    if a.json:
        print(json.dumps(summary))
        return EXIT_OK
    st = summary["study"]
    t = st["totals"]
    lines = [f"audit     {a.dir}: {st['cases']} cases; {st['done']} done, {st['failed']} failed, {st['pending']} pending"
             + (" (complete)" if st["complete"] else ""),
             f"queries   {t['sent']} images sent in {t['requests']} requests ({t['retries']} retries); "
             f"{t['reused']} answers reused from the store" + (f"; budget {st['budget']}" if st["budget"] else "")
             + (f"; cost {st['cost']:,.2f} at {st['price_per_1k_images']:g} per 1,000 images" if "cost" in st else "")
             + (f"; {st['request_size'][0]} images per request, not {st['request_size'][1]}: the endpoint refused "
                "larger requests" if st.get("request_size") else ""),
             f"flagged   {st['flagged_cases']} of {st['done']} explained cases"
             + (f" ({st['explained_findings']} findings explained)" if len(st["by_finding"]) > 1 else "")
             + "".join(f"; {f} {d['cases']}" for f, d in st["flags"].items() if d["cases"])]
    lines.append(f"{'case':<20} {'state':<8} {'class':<12} {'P':>6} {'evid.R2':>8} {'queries':>8}  flags")
    for c in summary["cases"]:  # one row per (case, explained finding)
        p = "" if c.get("target_prob") is None else f"{c['target_prob']:.3f}"
        r2 = "" if c.get("r2_evidence") is None else f"{c['r2_evidence']:.3f}"
        extra = ", ".join(c.get("flags") or []) if c["state"] != "failed" else c.get("reason", "")
        lines.append(f"{c['id']:<20} {c['state']:<8} {str(c.get('target_name') or ''):<12} {p:>6} {r2:>8} "
                     f"{str(c.get('queries') or ''):>8}  {extra}")
    print("\n".join(lines))
    return EXIT_OK
