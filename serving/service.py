"""One replica's serving state: the index and ranker bundles side by side, and every operation over them.

The index side (FAISS, candidate sources) and the ranker side (scorer, post features) live in the same
process, so a recommend request is one hop from the HTTP front: candidates, ranking and top-k run here on
arrays, with nothing serialised between them. Both sides follow the store on their own poll thread
(``BundleHolder``); a request takes each side's current bundle once, so it never sees a half swap.

``ServingFrontend`` is the operation surface shared by the Ray Serve deployment (``serving/app.py``) and
Ray-free callers (tests, the in-process benchmark): each operation validates its arguments, then hands
one query to a ``_*_batch`` hook. Here the hooks answer a batch of one; the deployment overrides them
with ``@serve.batch`` methods that merge concurrent callers into one FAISS / ranker call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from serving.api import (
    CandidateQuery,
    NeighborQuery,
    RankQuery,
    parse_k,
    parse_sources,
    parse_user_id,
    validate_neighbors,
    validate_rank,
)
from serving.blend import RecommendBlend
from serving.config import AppSpec
from serving.errors import RequestError
from serving.hot_swap import BundleHolder
from serving.index_side import IndexBundle, load_index_bundle
from serving.lineage import INDEX_POINTERS, RANKER_POINTERS, read_pointers
from serving.ranker_side import RankerBundle, load_ranker_bundle
from serving.recommend import Blending, rank_candidates, rank_response
from storage.store import Store


@dataclass(frozen=True)
class RecommendQuery:
    """One recommend query (validated): the top k of num_candidates ranked candidates."""

    user_id: int
    k: int
    num_candidates: int


class ServingState:
    """The two bundle holders of a replica and the batch operations over their current bundles."""

    def __init__(
        self,
        spec: AppSpec,
        on_swap: Callable[[Any, Any], None] | None = None,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        store = Store(spec.store_root)
        self.spec = spec
        self.score_weights = dict(spec.serve.score_weights)
        self.blend = RecommendBlend.from_config(spec.serve.recommend_blend)
        self.index: BundleHolder[IndexBundle] = BundleHolder(
            "index",
            lambda: read_pointers(store, INDEX_POINTERS),
            lambda pointers: load_index_bundle(store, pointers, spec.serve, spec.indexes),
            on_swap=on_swap,
            on_refuse=on_refuse,
        )
        self.ranker: BundleHolder[RankerBundle] = BundleHolder(
            "ranker",
            lambda: read_pointers(store, RANKER_POINTERS),
            lambda pointers: self._load_ranker(store, pointers),
            on_swap=on_swap,
            on_refuse=on_refuse,
        )

    def _load_ranker(self, store: Store, pointers: dict[str, str | None]) -> RankerBundle:
        bundle = load_ranker_bundle(store, pointers, self.spec.serve)
        bundle.set_score_weights(self.score_weights)
        return bundle

    def start(self, follow: bool = True) -> None:
        """Load the first bundles (RuntimeError when nothing is servable), then follow the store."""
        for holder in (self.index, self.ranker):
            if not holder.poll():
                raise RuntimeError(f"{holder.name}: no servable version in the store: {holder.last_error}")
        if follow:
            for holder in (self.index, self.ranker):
                holder.start(self.spec.serve.poll_interval_s)

    def stop(self) -> None:
        for holder in (self.index, self.ranker):
            holder.stop()

    def poll(self) -> None:
        """Check the store now (the ``reload`` knob)."""
        for holder in (self.index, self.ranker):
            holder.poll()

    def set_score_weights(self, weights: dict[str, float]) -> None:
        self._ranker().set_score_weights(weights)  # raises ValueError on unknown tasks
        self.score_weights = dict(weights)

    def _index(self) -> IndexBundle:
        bundle = self.index.current
        assert bundle is not None  # start() fails unless the first load succeeded
        return bundle

    def _ranker(self) -> RankerBundle:
        bundle = self.ranker.current
        assert bundle is not None
        return bundle

    # ---- batch operations: one list in, one result (or RequestError) per query out
    def candidates(self, queries: Sequence[CandidateQuery]) -> list[Any]:
        return self._index().candidates(queries)  # one bundle for the whole batch, even across a swap

    def neighbors(self, queries: Sequence[NeighborQuery]) -> list[Any]:
        return self._index().neighbors(queries)

    def rank(self, queries: Sequence[RankQuery]) -> list[Any]:
        ranker = self._ranker()
        return [
            result if isinstance(result, RequestError) else rank_response(result, ranker.tasks)
            for result in ranker.rank(queries)
        ]

    def recommend(self, queries: Sequence[RecommendQuery]) -> list[Any]:
        index, ranker = self._index(), self._ranker()
        sources = tuple(self.spec.serve.candidate_sources)
        candidate_lists = index.candidates([CandidateQuery(q.user_id, q.num_candidates, sources) for q in queries])
        # The blend reads this index bundle's catalog and lists: the ones the candidates came from, even across a swap.
        return rank_candidates(
            ranker, [q.user_id for q in queries], candidate_lists, [q.k for q in queries],
            Blending.of(self.blend, index),
        )

    def versions(self) -> dict[str, Any]:
        serving: dict[str, dict] = {}
        for holder in (self.index, self.ranker):
            for kind, artifacts in (getattr(holder.current, "versions", None) or {}).items():
                serving.setdefault(kind, {}).update(artifacts)
        return {
            "serving": serving,
            "index": self.index.status(),
            "ranker": {**self.ranker.status(), "score_weights": self.score_weights},
        }

    def check_health(self) -> None:
        for holder in (self.index, self.ranker):
            if holder.current is None:
                raise RuntimeError(f"{holder.name}: no bundle loaded")


def _raise_error(result: Any) -> Any:
    if isinstance(result, RequestError):
        raise result
    return result


class ServingFrontend:
    """The operations callers see (HTTP routes and Ray handles call these): validate, batch, answer.

    Subclasses set ``state`` and may override the ``_*_batch`` hooks to merge concurrent callers.
    """

    state: ServingState

    async def _candidates_batch(self, query: CandidateQuery) -> Any:
        return self.state.candidates([query])[0]

    async def _neighbors_batch(self, query: NeighborQuery) -> Any:
        return self.state.neighbors([query])[0]

    async def _rank_batch(self, query: RankQuery) -> Any:
        return self.state.rank([query])[0]

    async def _recommend_batch(self, query: RecommendQuery) -> Any:
        return self.state.recommend([query])[0]

    async def candidates(
        self, user_id: int, k: int | str | None = None, sources: Sequence[str] | str | None = None
    ) -> list[dict]:
        """Candidates for a user: [{post_id, source, score, scores}], seen posts excluded.

        Args:
            sources: source names or a ``?sources=`` string; default every enabled source.

        Raises:
            RequestError: 422 bad user id, k or source, 404 unknown user.
        """
        config = self.state.spec.serve
        if sources is None or isinstance(sources, str):
            sources = parse_sources(sources, enabled=config.candidate_sources)
        else:
            sources = parse_sources(",".join(sources), enabled=config.candidate_sources)
        query = CandidateQuery(parse_user_id(user_id), parse_k(k, config.default_k, config.max_k), sources)
        return _raise_error(await self._candidates_batch(query))

    async def neighbors(
        self, k: int | None = None, vector: list[float] | None = None, post_id: int | None = None
    ) -> list[dict]:
        """Posts nearest a vector or another post's content vector: [{post_id, score}].

        Raises:
            RequestError: 422 bad k or vector dimension, 404 unknown post.
        """
        query = validate_neighbors({"k": k, "vector": vector, "post_id": post_id}, self.state.spec.serve)
        return _raise_error(await self._neighbors_batch(query))

    async def rank(self, user_id: int, post_ids: Sequence[int]) -> list[dict]:
        """Scores in the given post order: [{post_id, score, probabilities}].

        Raises:
            RequestError: 422 bad arguments, 404 unknown user or posts.
        """
        query = validate_rank({"user_id": user_id, "post_ids": list(post_ids)}, self.state.spec.serve)
        if len(query.post_ids) == 0:
            return []
        return _raise_error(await self._rank_batch(query))

    async def recommend(
        self, user_id: int, k: int | str | None = None, num_candidates: int | str | None = None
    ) -> list[dict]:
        """The user's candidates ranked, top k: [{post_id, source, score, ...}].

        Raises:
            RequestError: 422 bad k or candidates, 404 unknown user.
        """
        config = self.state.spec.serve
        query = RecommendQuery(
            parse_user_id(user_id),
            parse_k(k, config.recommend_top_k, config.max_k),
            parse_k(
                num_candidates,
                config.default_recommend_candidates,
                config.max_recommend_candidates,
                name="candidates",
            ),
        )
        return _raise_error(await self._recommend_batch(query))

    async def versions(self) -> dict[str, Any]:
        return self.state.versions()

    async def check_health(self) -> None:
        self.state.check_health()
