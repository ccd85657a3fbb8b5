"""Decoding: from images or selections of studies to the labels (topics, terms) they evoke.

NiMARE's decoders (``nimare.decode``) at whole-database scale: :class:`CorrelationDecoder`
(every label's MKDAChi2 map in passes over a collection, saved as a :class:`DecoderModel`,
images decoded as one matrix product), :class:`CorrelationDistributionDecoder`,
:class:`NeurosynthDecoder`, :class:`BrainMapDecoder` and :class:`ROIAssociationDecoder`;
labels from any vocabulary or a user's study x label matrix (:func:`tfidf`,
:func:`with_labels`). :mod:`daskmeta.decode.serve` is an HTTP decoding service.
"""

from daskmeta.decode.continuous import CorrelationDecoder, CorrelationDistributionDecoder
from daskmeta.decode.discrete import BrainMapDecoder, NeurosynthDecoder, ROIAssociationDecoder
from daskmeta.decode.fwe import label_fwe
from daskmeta.decode.labels import select_labels, tfidf, with_labels
from daskmeta.decode.model import DecoderModel

__all__ = ["BrainMapDecoder", "CorrelationDecoder", "CorrelationDistributionDecoder",
           "DecoderModel", "NeurosynthDecoder", "ROIAssociationDecoder", "label_fwe", "select_labels",
           "tfidf", "with_labels"]
