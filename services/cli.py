"""The ``persona`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

logger = logging.getLogger("persona")

DEMO_USERS = ["1", "7", "13", "181", "405"]


def _open(args: argparse.Namespace, **overrides: object):
    from engine import Engine

    cfg: dict = dict(overrides)
    if getattr(args, "no_llm", False):
        cfg.setdefault("llm", {})["backend"] = "none"
    return Engine.open(args.path, cfg or None)


def cmd_demo(args: argparse.Namespace) -> int:
    from collections import Counter

    from engine.items import genres_of
    from engine.offline.datasets import load_movielens

    t0 = time.perf_counter()
    ml = load_movielens(args.data)
    print(f"MovieLens-100k: {len(ml.items)} movies, {len(ml.events)} ratings from {ml.root}")
    with _open(args) as eng:
        before = eng.stats()
        rep = eng.add_items(ml.items, progress=True)
        print(f"items: {rep.added} added, {rep.updated} updated, {rep.unchanged} unchanged (reused), {rep.failed} failed in {rep.seconds:.1f}s")
        for e in rep.errors[:5]:
            print(f"  item {e.item_id}: {e.error}")
        if before["events"] < len(ml.events):
            er = eng.add_events(ml.events)
            print(f"events: {er.added} added, {er.duplicates} already stored, {er.failed} refused")
        else:
            print(f"events: {before['events']} already stored (reused)")
        model = eng.learned.current()
        if model is None or model.info.get("n_events") != eng.stats()["events"]:
            fr = eng.fit(progress=True)
            print(f"fit: model {fr.version} on {fr.events} events, {fr.users} users in {fr.seconds:.1f}s")
        else:
            print(f"fit: model {model.info['version']} is current (reused)")
        users = args.users.split(",") if args.users else DEMO_USERS
        st = eng.update_profiles(users, progress=True, use_llm=not args.no_llm)
        note = f" (LLM unavailable: {st['llm_error']})" if st.get("llm_error") else ""
        print(f"profiles: {st['users']} users, {st['blocks']} new session blocks summarized in {st['llm_batches']} batched LLM calls{note}")
        for uid in users:
            prof = eng.profile(uid)
            recs = eng.recommend(uid, k=args.k)
            print(f"\nUser {uid}: {prof.n_events} ratings, {prof.n_blocks} session blocks")
            print(f"  taste ({prof.summary_source}{', ' + prof.structured['fallback'] if prof.structured and prof.structured.get('fallback') else ''}): {prof.summary}")
            hist = eng.history(uid)
            liked = [e for e in hist if e.rating is None or e.rating >= eng.settings.profile.positive_rating]
            liked_rows = eng.catalog.rows([e.item_id for e in liked])
            top = Counter(g for r in liked_rows.values() for g in genres_of(r)).most_common(5)  # prompt rows carry `genres`
            neg = eng.settings.profile.negative_rating
            low_rows = eng.catalog.rows([e.item_id for e in hist if e.rating is not None and e.rating <= neg])
            low = Counter(g for r in low_rows.values() for g in genres_of(r))
            # a harsh rater's liked counts alone mislead: 52 liked dramas beside 232 rated low is no taste for drama
            print(f"  check: genres of the items rated >= {eng.settings.profile.positive_rating:g} (rated <= {neg:g}): "
                  + ", ".join(f"{g} {n} ({low[g]})" for g, n in top))
            # the summary is rewritten block by block, so recent likes weigh most: a harsh rater's latest likes can
            # differ from the all-time counts above
            print("  recent likes: " + ("; ".join(liked_rows.get(e.item_id, {}).get("title", e.item_id) for e in liked[-5:][::-1]) or "none"))
            recent = hist[-5:][::-1]
            rows = eng.catalog.rows([e.item_id for e in recent])
            print("  latest: " + "; ".join(f"{rows.get(e.item_id, {}).get('title', e.item_id)} ({e.rating:g}*)" if e.rating is not None
                                          else rows.get(e.item_id, {}).get("title", e.item_id) for e in recent))
            print(f"  top-{args.k} ({recs.strategy}):")
            for i, r in enumerate(recs.items, 1):
                print(f"   {i:2d}. {r.title}  -  {r.reason}")
    print(f"\ndone in {time.perf_counter() - t0:.1f}s; data in {eng.settings.path}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    with _open(args) as eng:
        recs = eng.recommend(args.user, k=args.k, filters=json.loads(args.filters) if args.filters else None, rerank=args.rerank, explain=args.explain)
        print(recs.model_dump_json(indent=2))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``persona delete items ID...`` / ``persona delete user ID``: the report as JSON (idempotent)."""
    with _open(args) as eng:
        rep = eng.delete_items(args.ids) if args.what == "items" else eng.delete_user(args.ids[0])
        print(rep.model_dump_json(indent=2))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    with _open(args) as eng:
        for h in eng.search(args.query, user_id=args.user, k=args.k):
            print(f"{h.score:.3f}  {h.title}")
    return 0


def cmd_imagine(args: argparse.Namespace) -> int:
    with _open(args) as eng:
        out = eng.generate_image(args.user, args.prompt, n=args.n, reference_item=args.reference, seed=args.seed, steps=args.steps, size=args.size)
    dest = Path(args.output)
    paths = [dest] if len(out.images) == 1 else [dest.with_name(f"{dest.stem}-{i + 1}{dest.suffix}") for i in range(len(out.images))]
    for img, p in zip(out.images, paths):
        img.save(p)
    print(json.dumps({"files": [str(p) for p in paths], "prompt": out.prompt, "history_items": out.item_ids, "seed": out.seed,
                      "steps": out.steps, "size": list(out.size), "flagged_by_safety_checker": out.nsfw}, indent=2))
    return 0


def _ray(args: argparse.Namespace):
    """A RayBatch for ``--ray [ADDRESS]`` (no address: a local Ray), or None without the flag."""
    if getattr(args, "ray", None) is None:
        return None
    from engine.batch import RayBatch

    return RayBatch(address=args.ray or None, actors=args.ray_actors)


def cmd_ingest(args: argparse.Namespace) -> int:
    ray = _ray(args)
    try:
        with _open(args) as eng:
            rep = eng.add_items(args.catalog, image_dir=args.images, progress=True, ray=ray)
            print(rep.model_dump_json(indent=2))
    finally:
        if ray is not None:
            ray.close()
    return 0 if rep.failed == 0 else 3


def cmd_prompts(args: argparse.Namespace) -> int:
    from engine.config import Settings
    from engine.prompts import PromptRegistry

    reg = PromptRegistry(Path(args.prompts_dir) if args.prompts_dir else None, Settings().prompt_versions)
    if args.action == "list":
        for t in reg.list():
            default = "  (default)" if reg.get(t.name).ref == t.ref else ""
            print(f"{t.ref:28s} {t.path}{default}")
        return 0
    if args.action == "compare":
        if len(args.names) < 2:
            print("persona prompts compare NAME@A NAME@B [...] --users N", file=sys.stderr)
            return 2
        from engine.offline.datasets import load_movielens
        from engine.offline.evaluate import compare_prompts, write_comparison

        # compare_prompts checks the templates before it builds the store or loads a model
        rep = compare_prompts(_eval_dir(args), args.names, load_movielens(args.data), users=args.users, seed=args.seed,
                              config={"prompts_dir": args.prompts_dir} if args.prompts_dir else None)
        md = write_comparison(rep, Path(args.out))
        print(md.read_text())
        print(f"saved: {md} (+ .json)")
        return 0
    if args.action == "render":
        if len(args.names) != 1:
            print("persona prompts render NAME --user U [--item I]", file=sys.stderr)
            return 2
        with _open(args, prompts_dir=args.prompts_dir) as eng:
            name = args.names[0]
            if name.split("@")[0] == "preference_yes_no":
                print(eng.yes_no_prompts(args.user, [args.item], prompt=name)[0])
            else:
                print(eng.prompts.render(name, **_render_context(eng, name, args.user, args.item)))
        return 0
    return 2


def _render_context(eng, name: str, user: str, item: str | None) -> dict:
    ctx = eng.user_context(user)
    history = ctx.history_rows()
    base = name.split("@")[0]
    if base == "image_prompt":
        from engine.imagine import prompt_context

        var = prompt_context(ctx, history_items=eng.settings.image.history_items)
        var.pop("item_ids")
        return var
    if base == "preference_update":
        return {"previous": ctx.summary, "block_index": 0, "items": [dict(h, liked=True, rating=None) for h in history]}
    target = eng.catalog.rows([item])[item] if item else history[0]
    if base == "explain":
        return {"history": history, "item": target}
    if base == "rank_listwise":
        return {"summary": ctx.summary, "history": history, "candidates": [dict(target, label="A")]}
    return {"item": dict(target, description=target["summary"], attributes_text=", ".join(target["genres"]))}


def _eval_dir(args: argparse.Namespace) -> Path:
    from engine.config import Settings

    return Path(args.path or Settings().path) / "eval-ml100k"


def cmd_eval(args: argparse.Namespace) -> int:
    """Persona through Engine.fit()/recommend() against tuned baselines, full catalog, with intervals."""
    from engine.offline.datasets import load_movielens
    from engine.offline.persona_eval import run_report, write_report

    if args.ablate_only:
        from engine.offline.persona_eval import ablation_report, write_ablations

        only = tuple(args.ablate_only.split(",")) if args.ablate_only != "all" else None
        ab = ablation_report(_eval_dir(args), load_movielens(args.data), seed=args.seed, users=args.users, only=only)
        md = write_ablations(ab, Path(args.out))
        print(md.read_text())
        return 0
    base = tuple(args.baselines.split(",")) if args.baselines else None
    rep = run_report(_eval_dir(args), load_movielens(args.data), seed=args.seed, users=args.users, quick=args.quick, baselines=base,
                     ablate=args.ablate, cold_start=args.cold_start, cold_item_slot=args.cold_item_slot)
    md = write_report(rep, Path(args.out))
    print(md.read_text())
    print(f"report: {md} (+ report.json, metrics.png)")
    return 0


def cmd_eval_llm(args: argparse.Namespace) -> int:
    from engine.offline.datasets import load_movielens
    from engine.offline.evaluate import evaluate, write_report

    if args.adapter and args.llm_users == 0:
        print("persona eval-llm --adapter needs --llm-users N (the LLM rows are computed with and without it)", file=sys.stderr)
        return 2
    cfg = {"llm": {"backend": "none"}} if args.llm_users == 0 else {}
    report = evaluate(
        _eval_dir(args), load_movielens(args.data), users=args.users, llm_users=args.llm_users,
        seed=args.seed, sasrec=not args.no_sasrec, config=cfg, adapter=args.adapter, llm_rows=args.llm_rows,
    )
    md = write_report(report, Path(args.out))
    print(md.read_text())
    print(f"report: {md} (+ report.json, metrics.png)")
    return 0


def cmd_eval_summaries(args: argparse.Namespace) -> int:
    """Faithfulness of the structured preference summaries (engine.offline.summary_eval)."""
    from engine.config import Settings
    from engine.llm import open_llm
    from engine.offline.datasets import load_movielens
    from engine.offline.summary_eval import evaluate_summaries, write_summary_report

    settings = Settings(**({"llm": {"model": args.model, "batch_size": args.batch_size}} if args.model else {"llm": {"batch_size": args.batch_size}}))
    llm = None if args.no_llm else open_llm(settings.llm)
    rep = evaluate_summaries(load_movielens(args.data), llm, users=args.users, seed=args.seed, max_blocks=args.max_blocks, settings=settings)
    md = write_summary_report(rep, Path(args.out), "persona " + " ".join(sys.argv[1:]) if sys.argv[1:] else "persona eval-summaries")
    print(md.read_text())
    print(f"report: {md} (+ summaries.json)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from engine import Engine
    from engine.offline.datasets import load_movielens
    from engine.offline.evaluate import leave_last_out
    from engine.offline.train import TrainConfig, build_instruction_data, train_lora

    cfg = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.model_fields if getattr(args, k, None) is not None})
    ml = load_movielens(args.data)
    # The held-out last interaction of every user (what `persona eval` scores) is never trained on.
    split = leave_last_out(ml.events, [i.id for i in ml.items], seed=cfg.seed)
    t0 = time.perf_counter()
    with Engine.open(_eval_dir(args), {"llm": {"backend": "none"}, "clip": {"enabled": False}}) as eng:
        eng.add_items(ml.items, progress=True)
        model = args.model or eng.settings.llm.model
        exclude = {u: {e.item_id} for u, e in split.test.items()}
        examples = build_instruction_data(eng, split.train, [i.id for i in ml.items], cfg, exclude=exclude)
    print(f"instruction data: {len(examples)} examples from {cfg.users} users in {time.perf_counter() - t0:.0f}s")
    meta = train_lora(examples, model, args.out, cfg, extra_meta={"data": str(ml.root), "split": f"leave-last-out seed {cfg.seed}, training side"})
    print(json.dumps({k: meta[k] for k in ("examples", "examples_by_kind", "data_hash", "steps", "loss_first_steps", "loss_last_steps", "seconds")}, indent=2))
    print(f"adapter: {args.out}\n  in-process: PERSONA_LLM__ADAPTER={Path(args.out).resolve()}"
          f"\n  vLLM: --enable-lora --max-lora-rank {cfg.lora_r} --lora-modules persona-lora={Path(args.out).resolve()}, then PERSONA_LLM__ADAPTER=persona-lora"
          f"\n  compare: persona eval-llm --llm-users 40 --adapter {args.out}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    ray = _ray(args)
    try:
        with _open(args) as eng:
            rep = eng.fit(progress=True, ray=ray)
            print(rep.model_dump_json(indent=2))
    finally:
        if ray is not None:
            ray.close()
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    ray = _ray(args)
    try:
        with _open(args) as eng:
            users = [u for u in args.users.split(",") if u] if args.users else None
            st = eng.update_profiles(users, use_llm=not args.no_llm, progress=True, ray=ray)
            print(json.dumps(st, indent=2))
    finally:
        if ray is not None:
            ray.close()
    return 0


def serve_blas_threads() -> None:
    """A server's requests run in parallel, each multiplying small matrices: one BLAS thread per process serves them
    better than BLAS splitting each product (bench/api_load.py, ml-100k, 8 clients: 57.8 -> 70.5 req/s, p95 190 -> 148
    ms). Set once here, in the main thread, before any request; an explicit OPENBLAS_NUM_THREADS / OMP_NUM_THREADS wins."""
    if os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"):
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, "blas")
    except Exception:  # noqa: BLE001 - an unknown BLAS keeps its threads; serving works either way
        logging.getLogger(__name__).debug("could not limit BLAS threads", exc_info=True)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("persona serve needs: pip install 'persona-engine[server]'", file=sys.stderr)
        return 2
    from services.api import create_app

    serve_blas_threads()
    try:
        app = create_app(path=args.path)
    except ValueError as e:  # a weak or malformed API key: refuse to start
        print(f"persona serve: {e}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def cmd_user_token(args: argparse.Namespace) -> int:
    from engine.config import Settings
    from services.tokens import mint_user_token

    secret = Settings().api_token_secret
    if not secret:
        print("persona user-token: set PERSONA_API_TOKEN_SECRET (the API server's token secret)", file=sys.stderr)
        return 2
    try:
        print(mint_user_token(secret, args.user_id, ttl_s=args.ttl))
    except ValueError as e:
        print(f"persona user-token: {e}", file=sys.stderr)
        return 2
    return 0


def _ray_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help=f"{what}; ADDRESS: a Ray cluster (auto, ray://host:10001), none: start a local Ray (extra `ray`)")
    p.add_argument("--ray-actors", type=int, default=2, help="actors in the Ray pool")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="persona", description="Retrieval-augmented multimodal personalization.")
    p.add_argument("--path", default=None, help="data folder of the embedded store (PERSONA_PATH)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="index MovieLens-100k and print recommendations for a few users")
    d.add_argument("--data", default=None, help="ml-100k folder (default ../shared/data/ml-100k)")
    d.add_argument("--users", default=None, help="comma-separated user ids")
    d.add_argument("-k", type=int, default=10)
    d.add_argument("--no-llm", action="store_true", help="extractive summaries, no LLM")
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("recommend", help="recommendations for one user, as JSON")
    r.add_argument("user")
    r.add_argument("-k", type=int, default=10)
    r.add_argument("--filters", default=None, help='JSON, e.g. {"genres": "Comedy"}')
    r.add_argument("--rerank", choices=["none", "pointwise", "listwise", "llm_feature"], default=None)
    r.add_argument("--explain", action="store_true")
    r.add_argument("--no-llm", action="store_true")
    r.set_defaults(fn=cmd_recommend)

    de = sub.add_parser("delete", help="remove items (with their events) or a user (events, profile); prints what went")
    de.add_argument("what", choices=["items", "user"])
    de.add_argument("ids", nargs="+", help="item ids, or one user id")
    de.set_defaults(fn=cmd_delete)

    s = sub.add_parser("search", help="personalized search")
    s.add_argument("query")
    s.add_argument("--user", default=None)
    s.add_argument("-k", type=int, default=10)
    s.set_defaults(fn=cmd_search)

    im = sub.add_parser("imagine", help="a personalized image for a user (diffusers; image.model, default sd-turbo)")
    im.add_argument("user")
    im.add_argument("prompt", nargs="?", default=None, help="what to draw; left out: a poster for a new film the user would like")
    im.add_argument("-o", "--output", default="out.png", help="PNG file (several images: out-1.png, out-2.png, ...)")
    im.add_argument("-n", type=int, default=1)
    im.add_argument("--reference", default=None, help="item id whose image is the starting point (img2img)")
    im.add_argument("--seed", type=int, default=None)
    im.add_argument("--steps", type=int, default=None)
    im.add_argument("--size", type=int, default=None)
    im.add_argument("--no-llm", action="store_true")
    im.set_defaults(fn=cmd_imagine)

    i = sub.add_parser("ingest", help="index a catalog (JSONL, CSV or Parquet)")
    i.add_argument("catalog")
    i.add_argument("--images", default=None, help="folder of images named by item id")
    _ray_args(i, "encode the catalog on Ray Data (an actor pool of text encoders)")
    i.set_defaults(fn=cmd_ingest)

    pr = sub.add_parser("prompts", help="list or render prompt templates")
    pr.add_argument("action", choices=["list", "render", "compare"])
    pr.add_argument("names", nargs="*", help="render: NAME[@vN]; compare: NAME@vA NAME@vB ...")
    pr.add_argument("--user", default="1")
    pr.add_argument("--item", default=None)
    pr.add_argument("--prompts-dir", default=None)
    pr.add_argument("--users", type=int, default=20, help="compare: users sampled for the evaluation")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--data", default=None)
    pr.add_argument("--out", default="reports/prompts-compare")
    pr.set_defaults(fn=cmd_prompts)

    ev = sub.add_parser("eval", help="Persona (fit + recommend, full catalog) against tuned baselines on ml-100k, with 95%% intervals")
    ev.add_argument("--data", default=None)
    ev.add_argument("--users", type=int, default=None, help="evaluate a seeded sample of users (default: all 943)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--quick", action="store_true", help="small grids, four baselines (CI smoke; a few minutes)")
    ev.add_argument("--baselines", default=None, help="comma-separated subset, e.g. ease,markov,sasrec")
    ev.add_argument("--out", default="reports/eval")
    ev.add_argument("--ablate", action="store_true", help="also refit on VALID with each source / feature group removed, and the pool's recall")
    ev.add_argument("--cold-start", action="store_true", help="also cold users (last 5 events) and cold items (10%% of items without events), test")
    ev.add_argument("--cold-item-slot", type=int, default=0,
                    help="with --cold-start: also Persona with fit.new_item_slot=N in the cold-item setting, every user scored")
    ev.add_argument("--ablate-only", default=None, metavar="VARIANTS",
                    help="only the ablations (VALID): 'all' or comma-separated names like '-source cf,-features item'; writes ablations.md/json")
    ev.set_defaults(fn=cmd_eval)

    ev = sub.add_parser("eval-llm", help="LLM rows (pointwise/listwise) on the legacy 1:20 protocol, with and without an adapter")
    ev.add_argument("--data", default=None)
    ev.add_argument("--users", type=int, default=None, help="sample of users for all methods (default: all 943)")
    ev.add_argument("--llm-users", type=int, default=0, help="sample of users for the LLM variants (0: skip them)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-sasrec", action="store_true")
    ev.add_argument("--out", default="reports/eval")
    ev.add_argument("--adapter", default=None, help="LoRA adapter (folder; served name on vLLM): LLM rows before and after")
    ev.add_argument("--llm-rows", choices=["all", "pointwise"], default="all", help="pointwise: only the pointwise LLM rows (faster)")
    ev.set_defaults(fn=cmd_eval_llm)

    es = sub.add_parser("eval-summaries", help="faithfulness of the structured preference summaries on ml-100k users, with a 95%% interval")
    es.add_argument("--data", default=None)
    es.add_argument("--users", type=int, default=200, help="seeded sample of users")
    es.add_argument("--seed", type=int, default=0)
    es.add_argument("--max-blocks", type=int, default=2, help="recurrent LLM steps per user (older blocks folded)")
    es.add_argument("--model", default=None, help="LLM (default: llm.model); a vLLM server when PERSONA_LLM__URL is set")
    es.add_argument("--batch-size", type=int, default=8)
    es.add_argument("--no-llm", action="store_true", help="the computed (count-only) summaries: the metric's reference point")
    es.add_argument("--out", default="reports/summaries")
    es.set_defaults(fn=cmd_eval_summaries)

    t = sub.add_parser("train", help="LoRA fine-tuning on instruction data built from ml-100k interactions")
    t.add_argument("--out", default="adapters/persona-lora")
    t.add_argument("--data", default=None)
    t.add_argument("--model", default=None, help="base model (default: llm.model, the packaged Qwen2.5-0.5B-Instruct; packaged:gemma-3-270m trains about 2x faster)")
    # Options, help and defaults come from engine.offline.train.TrainConfig (None here: not given).
    from engine.offline.train import TrainConfig

    for name, kind in [("users", int), ("targets_per_user", int), ("negatives", int), ("format", str), ("epochs", int),
                       ("lr", float), ("batch_size", int), ("lora_r", int), ("seed", int), ("device", str)]:
        field = TrainConfig.model_fields[name]
        choices = ["pointwise", "listwise", "both"] if name == "format" else None
        t.add_argument("--" + name.replace("_", "-"), type=kind, choices=choices, help=f"{field.description} (default: {field.default})")
    t.set_defaults(fn=cmd_train)

    f = sub.add_parser("fit", help="train the learned recommender from the stored events (Engine.fit)")
    _ray_args(f, "compute the ranker's training features for chunks of users on Ray Data")
    f.set_defaults(fn=cmd_fit)

    pf = sub.add_parser("profiles", help="summarize new session blocks and refresh taste vectors (Engine.update_profiles)")
    pf.add_argument("--users", help="comma-separated user ids (default: every user with events)")
    pf.add_argument("--no-llm", action="store_true", help="computed summaries only")
    _ray_args(pf, "run the summary steps' LLM calls on a pool of Ray actors (one model each)")
    pf.set_defaults(fn=cmd_profiles)

    sv = sub.add_parser("serve", help="run the HTTP API")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.set_defaults(fn=cmd_serve)

    ut = sub.add_parser("user-token", help="mint a token that reads one user's data only (signed with PERSONA_API_TOKEN_SECRET)")
    ut.add_argument("user_id")
    ut.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    ut.set_defaults(fn=cmd_user_token)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from engine.errors import PersonaError

    if args.cmd == "delete" and args.what == "user" and len(args.ids) != 1:
        build_parser().error("delete user takes one user id")
    try:
        return int(args.fn(args) or 0)
    except PersonaError as e:
        print(f"persona: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
