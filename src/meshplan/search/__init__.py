"""Search algorithms behind one interface: a `SearchRequest` in, a `SearchResult` out."""

from meshplan.search.base import Objective, SearchRequest, SearchResult
from meshplan.search.exhaustive import search_exhaustive

__all__ = ["Objective", "SearchRequest", "SearchResult", "search_exhaustive"]
