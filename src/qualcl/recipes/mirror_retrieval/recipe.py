"""The mirror-retrieval recipe on the shared driver: data → metric-learning training → exact retrieval evaluation."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from qualcl.data.table import ImageTable
from qualcl.evaluation import RetrievalIndex
from qualcl.metrics import dr_graded_relevance, retrieval_metrics, stratified_retrieval_metrics
from qualcl.recipes import ablation
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader, train_loader
from qualcl.recipes.mirror_retrieval.config import SPEC, MirrorRetrievalConfig
from qualcl.recipes.mirror_retrieval.data import RetrievalData, RetrievalDataset, load_retrieval_data
from qualcl.recipes.mirror_retrieval.model import MirrorRetrievalNet
from qualcl.recipes.mirror_retrieval.modules import RetrievalTraining
from qualcl.recipes.plots import plot_embedding, plot_grouped_bars, plot_retrieval_grid
from qualcl.recipes.run_folder import ModelCard, strata_table

__all__ = ["MIRROR_RETRIEVAL", "MirrorRetrievalRecipe", "run_ablation", "run_mirror_retrieval"]

STAGE = "train"
PAPER = (
    'Fang et al., "Deep metric learning with mirror attention and fine triplet loss for fundus image '
    'retrieval in ophthalmology", Biomedical Signal Processing and Control 80, 104277 (2023)'
)
GRADES = 5
#: Largest ``queries × ranks`` the evaluation ranks, so that mAP@R (which needs R ranks per query) stays affordable.
MAX_RANKED = 20_000_000


def _headline_keys(k: int) -> dict[str, str]:
    return {
        f"map@{k}": f"mAP@{k}",
        f"precision@{k}": f"P@{k}",
        f"ndcg@{k}": f"NDCG@{k}",
        "precision@1": "P@1",
        "map@r": "mAP@R",
    }


class MirrorRetrievalRecipe(Recipe[MirrorRetrievalConfig, RetrievalData, RetrievalTraining]):
    """Fundus image retrieval with mirror attention and the fine triplet loss, end to end.

    Stages: (1) data — database = training + validation images, queries = test images (the
    public FundusDR protocol); (2) ``train`` — the metric loss on GeM descriptors of the two
    mirror-attention branches, optional mirror reconstruction and grade BCE, the best epoch chosen
    by leave-one-out validation mAP@k; (3) evaluation — exact cosine search
    (:class:`qualcl.evaluation.RetrievalIndex`), P@k, R@k, mAP@k (two normalisations), MRR,
    graded NDCG@k, mAP@R and the public code's HR@k / legacy mAP@k, overall, per query grade and
    per query quality level. Plots: query + top-k grids per quality level (hits framed), P@k per
    grade and quality level, the descriptor map, training curves.

    Reference:
        Fang et al., "Deep metric learning with mirror attention and fine triplet loss for fundus
        image retrieval in ophthalmology", BSPC 2023.
    """

    spec = SPEC
    paper = PAPER

    def load_data(self, ctx: RunContext[MirrorRetrievalConfig]) -> RetrievalData:
        """Generate (once) or read the images; split database / validation / queries."""
        cfg = ctx.config.data
        return load_retrieval_data(cfg, ctx.dataset_root(cfg), progress=ctx.image_progress)

    def setup(self, ctx: RunContext[MirrorRetrievalConfig], data: RetrievalData) -> RetrievalTraining:
        """The network (randomly initialised) in its training module."""
        config = ctx.config
        net = MirrorRetrievalNet(config.model, num_grades=GRADES, in_chans=data.train.images.shape[1])
        return RetrievalTraining(net, config.train, k=config.eval.k, num_grades=GRADES)

    def stages(self, config: MirrorRetrievalConfig) -> list[Stage]:
        """One stage, ``train``."""
        return [Stage(STAGE, self.train)]

    def train(self, ctx: RunContext[MirrorRetrievalConfig], data: RetrievalData, module: RetrievalTraining) -> None:
        """Metric learning over the training images, the best epoch by validation mAP@k."""
        config = ctx.config
        cfg = config.train
        dataset = RetrievalDataset(data.train, random_mirrors=config.model.mirrors == "random", seed=config.seed)
        ctx.fit(
            STAGE,
            module,
            train_loader(dataset, cfg.batch_size, seed=config.seed),
            eval_loader(RetrievalDataset(data.val), cfg.batch_size),
            weights={"mirror_retrieval": module.net},
            max_epochs=cfg.epochs,
            monitor="val/map",
            find_unused_parameters=config.model.attention == "official",  # f_h is unused there
            info={"epochs": cfg.epochs},
        )

    # ------------------------------------------------------------------ evaluation
    def descriptors(
        self, ctx: RunContext[MirrorRetrievalConfig], module: RetrievalTraining, table: ImageTable
    ) -> Tensor:
        """``(N, D)`` descriptors of ``table`` (deterministic mirrors), gathered from every rank."""

        def forward(batch: Any) -> dict[str, Tensor]:
            return {"descriptor": module.net(batch[0]).descriptor.float()}

        out = ctx.predict(
            forward, RetrievalDataset(table), batch_size=ctx.config.train.batch_size, modules=[module.net]
        )
        return out["descriptor"]

    def evaluate(
        self, ctx: RunContext[MirrorRetrievalConfig], data: RetrievalData, module: RetrievalTraining
    ) -> dict[str, Any]:
        """Exact search of the test queries in the database; metrics overall, per grade, per quality."""
        k = ctx.config.eval.k
        database, queries = data.database, data.test
        db, q = self.descriptors(ctx, module, database), self.descriptors(ctx, module, queries)
        index = RetrievalIndex(db, database.label)
        largest_class = int(torch.bincount(database.label).max())
        ranks = max(k, largest_class) if len(queries) * max(k, largest_class) <= MAX_RANKED else k
        hits = index.search(q, min(ranks, len(database)))
        ranked = hits.indices
        if ranked.shape[1] < k:  # a database smaller than k: the missing ranks are misses (padding)
            ranked = torch.cat([ranked, ranked.new_full((ranked.shape[0], k - ranked.shape[1]), -1)], dim=1)
        gains = dr_graded_relevance(GRADES)
        grade_names = [f"grade {g}" for g in range(GRADES)]
        by_grade = stratified_retrieval_metrics(
            queries.label, database.label, ranked, k, queries.label, grade_names, graded_relevance=gains
        )
        by_quality = stratified_retrieval_metrics(
            queries.label,
            database.label,
            ranked,
            k,
            queries.quality,
            list(queries.quality_names),
            graded_relevance=gains,
        )
        overall = by_grade.pop("overall")
        by_quality.pop("overall")
        per_query = retrieval_metrics(queries.label, database.label, ranked, k, graded_relevance=gains, per_query=True)
        if ctx.run.writable:
            self._plots(ctx, data, q, ranked, per_query)
        record = ctx.records.get(STAGE, {})
        return {
            "test": {"overall": overall, "by_grade": by_grade, "by_quality": by_quality},
            "data": {
                "database_images": len(database),
                "train_images": len(data.train),
                "val_images": len(data.val),
                "query_images": len(queries),
                "database_grades": torch.bincount(database.label, minlength=GRADES).tolist(),
                "query_quality": torch.bincount(queries.quality, minlength=len(queries.quality_names)).tolist(),
                "ranked": int(ranked.shape[1]),
            },
            "descriptor_dim": int(db.shape[1]),
            "best_epoch": record.get("best_epoch"),
        }

    # ------------------------------------------------------------------ plots
    def _plots(
        self,
        ctx: RunContext[MirrorRetrievalConfig],
        data: RetrievalData,
        q: Tensor,
        ranked: Tensor,
        per_query: dict[str, Tensor],
    ) -> None:
        k, queries, database = ctx.config.eval.k, data.test, data.database
        names = list(queries.quality_names)
        # P@k per query grade, one bar series per quality level (does a degraded query still find its grade?)
        precision = per_query[f"precision@{k}"]
        bars: dict[str, dict[str, float]] = {}
        for level, level_name in enumerate(names):
            row = {}
            for grade in range(GRADES):
                keep = (queries.quality == level) & (queries.label == grade) & torch.isfinite(precision)
                if bool(keep.any()):
                    row[str(grade)] = float(precision[keep].double().mean())
            if row:
                bars[level_name] = row
        plot_grouped_bars(
            bars,
            ctx.run.path("plots", "precision_per_grade.png"),
            title=f"P@{k} of the test queries by grade and quality",
            xlabel="query DR grade",
            ylabel=f"P@{k}",
        )
        plot_embedding(
            q,
            queries.label,
            [str(g) for g in range(GRADES)],
            ctx.run.path("plots", "descriptor_map.png"),
            title="Test descriptors by DR grade",
        )
        # query + top-k grid: per quality level, queries spread over the grades (highest first)
        chosen: list[int] = []
        per_level = ctx.config.eval.grid_queries
        for level in range(len(names)):
            members = [i for i in range(len(queries)) if int(queries.quality[i]) == level]
            members.sort(key=lambda i: (-int(queries.label[i]), i))
            if members:
                step = max(1, len(members) // per_level)
                chosen += members[::step][:per_level]
        if not chosen:
            return
        shown = min(k, 8)
        rows = ranked[chosen, :shown]
        images = torch.stack(
            [
                torch.stack(
                    [database.images[j] if j >= 0 else torch.zeros_like(database.images[0]) for j in r.tolist()]
                )
                for r in rows
            ]
        )
        grades = torch.where(rows >= 0, database.label[rows.clamp_min(0)], torch.full_like(rows, -1))
        hits = grades == queries.label[chosen].unsqueeze(1)
        plot_retrieval_grid(
            queries.images[chosen],
            images,
            [f"grade {int(queries.label[i])} · {names[int(queries.quality[i])]}" for i in chosen],
            [[f"g{int(g)}" if g >= 0 else "—" for g in r.tolist()] for r in grades],
            hits,
            ctx.run.path("plots", "retrieval_grid.png"),
            title=f"Top-{shown} results (green: same grade)",
        )

    # ------------------------------------------------------------------ ablation
    def ablation_columns(self, config: MirrorRetrievalConfig) -> dict[str, str]:
        """mAP@k first (shown per stratum), then P@k, NDCG@k, mAP@R and the public code's legacy mAP@k."""
        k = config.eval.k
        return {
            f"map@{k}": f"mAP@{k}",
            f"precision@{k}": f"P@{k}",
            f"ndcg@{k}": f"NDCG@{k}",
            "map@r": "mAP@R",
            f"map_legacy@{k}": f"legacy mAP@{k}",
        }

    def ablation_cells(self, config: MirrorRetrievalConfig, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
        """All test queries, then per query grade, then per query quality level."""
        test = metrics["test"]
        return {"overall": test["overall"], **test["by_grade"], **test["by_quality"]}

    def ablation_notes(self, config: MirrorRetrievalConfig) -> str:
        """The protocol, and what the paper publishes."""
        k = config.eval.k
        return (
            f"Encoder `{config.model.encoder}`, {config.train.epochs} epochs. Database = training + validation "
            f"images, queries = test images; relevance = same DR grade. mAP@{k} divides by the relevant items "
            f"retrieved; legacy mAP@{k} is the public FundusDR code's (divides by {k}). The paper publishes no "
            "numbers (only its abstract is public)."
        )

    def model_card(
        self,
        ctx: RunContext[MirrorRetrievalConfig],
        data: RetrievalData,
        module: RetrievalTraining,
        results: dict[str, Any],
    ) -> ModelCard:
        """Headline mAP@k / P@k / NDCG@k, the per-grade and per-quality table, the plots."""
        config, m, t = ctx.config, ctx.config.model, ctx.config.train
        k = config.eval.k
        test = results["test"]
        summary = (
            f"Preset `{config.preset}`, seed {config.seed}, dataset `{config.data.dataset}` at "
            f"{config.data.image_size} px. Encoder `{m.encoder}`, mirror attention `{m.attention}` "
            f"(mirrors `{m.mirrors}`), GeM descriptor of {results['descriptor_dim']} dimensions; metric loss "
            f"`{t.metric_loss}`, reconstruction {m.reconstruction}, grade BCE {m.classifier}. {t.epochs} epochs "
            f"on {len(data.train)} images; best epoch {results.get('best_epoch')} by validation mAP@{k}. "
            f"Database {len(data.database)} images (train + validation), {len(data.test)} queries (test)."
        )
        rows = {"overall": test["overall"], **test["by_grade"], **test["by_quality"]}
        table = strata_table(
            {"test queries": {name: {**v, "n": v.get("queries", 0)} for name, v in rows.items()}},
            _headline_keys(k),
        )
        overall = test["overall"]
        return ModelCard(
            title=f"Mirror-attention retrieval ({m.encoder}) on {config.data.dataset}",
            paper=PAPER,
            summary=summary,
            headline={label: overall[key] for key, label in _headline_keys(k).items() if key in overall},
            table=table,
            plots=[f"{STAGE}.png", "retrieval_grid.png", "precision_per_grade.png", "descriptor_map.png"],
        )


#: The mirror-retrieval recipe.
MIRROR_RETRIEVAL = MirrorRetrievalRecipe()

#: ``MIRROR_RETRIEVAL.run(config, out, *, callbacks=())``: the run end to end into ``out``; re-running resumes.
run_mirror_retrieval = MIRROR_RETRIEVAL.run

#: ``run_ablation(config, out, *, seeds, variants, progress, run_missing)``: the declared ablation
#: (:data:`~qualcl.recipes.mirror_retrieval.config.ABLATIONS`) by the one runner
#: (:func:`qualcl.recipes.ablation.run_ablation`).
run_ablation = functools.partial(ablation.run_ablation, MIRROR_RETRIEVAL)
