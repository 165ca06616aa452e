"""Decoding apart from the model (t5x layering): the semantic-ID trie, the jitted
constrained beam search and the exhaustive scorer."""

from jaxrec.decoding import beam_search  # the module; its function: beam_search.beam_search
from jaxrec.decoding.beam_search import (BeamSearchOutput, DecodingConfig, DecodingError,
                                         make_beam_search)
from jaxrec.decoding.exact import exact_scores, exact_top_k
from jaxrec.decoding.trie import Trie, TrieLevel, build_trie, trie_stats

__all__ = ["BeamSearchOutput", "DecodingConfig", "DecodingError", "beam_search",
           "make_beam_search", "exact_scores", "exact_top_k", "Trie", "TrieLevel", "build_trie",
           "trie_stats"]
