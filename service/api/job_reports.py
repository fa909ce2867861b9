"""GET /v1/jobs/{id}/report: the report of a succeeded experiment or error-analysis job.

The worker stores the report as JSON on the job row, in the transaction that marks the job
succeeded (registry.succeed_with_report, or for an experiment the one that ends its last cell,
which also reports a failed experiment's other cells); here it is rendered as JSON (the default), Markdown, or,
for an error analysis, the PNG plot of EE and AE against parameter count. The format is chosen by
`?format=json|md|png`, else by the Accept header.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response

from ml.experiment import markdown_tables, paper_tables
from ml.figures import FigureNotApplicable, excess_risk_plot
from service import registry
from service.api.deps import SweptSessionDep, get_job_or_404
from service.errors import ApiError
from service.registry import JobStatus
from service.schemas import ERROR_RESPONSES, job_request_adapter

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={**ERROR_RESPONSES, 406: ERROR_RESPONSES[409]})

ReportFormat = Literal["json", "md", "png"]
MEDIA_TYPES: dict[str, str] = {"json": "application/json", "md": "text/markdown", "png": "image/png"}
# What a wildcard media range (`type/*`) stands for.
WILDCARDS: dict[str, str] = {"*/*": "json", "application/*": "json", "text/*": "md", "image/*": "png"}
REPORT_KINDS = ("experiment", "error-analysis")


def negotiate(accept: str | None) -> str:
    """The format an Accept header prefers: highest q first, then the most specific range, then the
    first listed. No header (or an empty one) means JSON; a header naming none of ours is a 406."""
    if not accept or not accept.strip():
        return "json"
    best: tuple[float, int, int] | None = None
    chosen = None
    for position, part in enumerate(accept.split(",")):
        media, *params = (piece.strip() for piece in part.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        exact = next((fmt for fmt, media_type in MEDIA_TYPES.items() if media_type == media), None)
        fmt, specificity = (exact, 2) if exact else (WILDCARDS.get(media), 0 if media == "*/*" else 1)
        if fmt is None:
            continue
        rank = (q, specificity, -position)
        if best is None or rank > best:
            best, chosen = rank, fmt
    if chosen is None:
        raise ApiError(406, "not_acceptable", f"cannot answer with any of the types accepted ({accept}); "
                       "a report is application/json, text/markdown or (error analysis) image/png")
    return chosen


def error_analysis_markdown(report: dict[str, Any]) -> str:
    """EE, AE and both risks (mean ± std over repeats) and the parameter count per model, then the Bayes risk."""
    lines = [
        "### Excess-risk decomposition",
        "",
        (f"{report['n_train']} training images, R_n on {report['n_eval']} images, {report['repeats']} repeats "
         "(mean ± standard deviation over repeats)."),
        "",
        "| model | parameters | estimation error (EE) | approximation error (AE) | R_n(h-hat) | R_n(h-bar) | repeats |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in sorted(report["models"], key=lambda m: m["parameter_count"]):
        cells = [f"{m[f'{key}_mean']:.4f} ± {m[f'{key}_std']:.4f}" for key in ("ee", "ae", "risk_hat", "risk_bar")]
        lines.append(f"| {m['model']} | {m['parameter_count']:,} | " + " | ".join(cells) + f" | {m['repeats']} |")
    bayes = report["bayes"]
    how = bayes["method"].replace("_", " ")
    if bayes.get("mahalanobis") is not None:
        how += f", Mahalanobis distance Δ = {bayes['mahalanobis']:.4f}"
    lines += [
        "",
        (f"Bayes risk R(h*) = {bayes['risk']:.6g} ({how}); mean R_n(h*) on the evaluation sets = "
         f"{bayes['empirical_risk_mean']:.4f}."),
    ]
    return "\n".join(lines) + "\n"


def on_papers_task(job: registry.Job) -> bool:
    """Whether an experiment ran on the paper's own task (MNIST 0 vs 1), where its numbers stand beside ours."""
    return job_request_adapter.validate_python(job.request).experiment_config().dataset.is_papers


def markdown(job: registry.Job, report: dict[str, Any]) -> str:
    if job.kind == "experiment":
        return f"## Experiment {job.id}\n\n" + markdown_tables(report["rows"], paper=on_papers_task(job))
    return f"## Error analysis {job.id}\n\n" + error_analysis_markdown(report)


def _status_text(job: registry.Job) -> str:
    if job.status == JobStatus.running:
        progress = job.progress
        done = f" ({progress['epoch']} of {progress['epochs']} done)" if progress["epochs"] else ""
        return f"is running{done}; its report exists once it has succeeded"
    if job.status == JobStatus.queued:
        return "is queued; its report exists once it has succeeded"
    return f"has {job.status}; only a succeeded job, or an experiment some of whose cells failed, has a report"


@router.get(
    "/{job_id}/report",
    summary="The report of an experiment or error-analysis job",
    description="JSON by default (an experiment's also lays out Tables 1 and 2 as `tables`, the paper's "
    "numbers beside ours when it ran on the paper's task, MNIST 0 vs 1); Markdown (the experiment's accuracy and time tables, or the error "
    "analysis's EE/AE table and Bayes risk) with `?format=md` or `Accept: text/markdown`; for an error "
    "analysis, a PNG plot of EE and AE against parameter count (log scale) with `?format=png` or "
    "`Accept: image/png`. `format` wins over Accept. An experiment some of whose cells failed reports the "
    "others and lists the failed ones (`failed`). 409 until the job has succeeded, for a train job "
    "(its result is a model: see /v1/models/{id}) and for a PNG of an experiment.",
    responses={200: {"content": {"application/json": {}, "text/markdown": {}, "image/png": {}}}},
)
def get_report(
    job_id: str,
    session: SweptSessionDep,
    format_: Annotated[ReportFormat | None, Query(alias="format", description="json, md or png; overrides Accept")] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    job = get_job_or_404(session, job_id)
    if job.kind not in REPORT_KINDS:
        models = " ".join(f"/v1/models/{model_id}" for model_id in job.model_ids)
        where = f": its result is a model, at {models}" if models else ": its result is a model, at /v1/models/{id}"
        raise ApiError(409, "no_report", f"job {job_id} is a {job.kind} job, which has no report{where}")
    # A failed experiment reports the cells that succeeded and names those that failed.
    report = job.report if job.status in (JobStatus.succeeded, JobStatus.failed) else None
    if report is None:
        raise ApiError(409, "report_not_ready", f"job {job_id} {_status_text(job)}")
    fmt = format_ or negotiate(accept)
    headers = {"Vary": "Accept"}
    if fmt == "md":
        return Response(markdown(job, report), media_type="text/markdown; charset=utf-8", headers=headers)
    if fmt == "png":
        if job.kind != "error-analysis":
            raise ApiError(409, "no_plot", f"job {job_id} is an {job.kind}, which has no plot; "
                           "ask for its report as JSON or Markdown")
        try:
            png = excess_risk_plot(report)
        except FigureNotApplicable as exc:
            raise ApiError(409, "no_plot", str(exc)) from exc
        return Response(png, media_type="image/png", headers=headers)
    if job.kind == "experiment":
        report = {**report, "tables": paper_tables(report["rows"], paper=on_papers_task(job))}
    return JSONResponse(report, headers=headers)
