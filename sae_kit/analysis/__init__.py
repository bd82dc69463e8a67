"""Feature analysis: one streaming pass over a store, per-feature statistics and examples.

    streaming       AnalysisConfig, analyze: the one pass (top-k, bands, density, histograms,
                    logit effects) written as an analysis directory
    result          FeatureAnalysis, load_analysis, select_features, strongest_features,
                    parse_feature_list, load_explanations
    stats           FeatureStats: the streaming per-feature statistics
    selection       vectorised top-k / bottom-k selection primitives behind FeatureStats
    examples        the context windows of each feature's examples, re-encoded
    logit_effects   each feature's decoder direction through the final norm and the unembedding
    prompt_view     which features fire on a text, token by token
    autointerp      ExplainConfig, explain_features: explanations by a chat model, scored (detection, fuzzing)
    neuronpedia     export_neuronpedia: the JSON Neuronpedia ingests (SAEDashboard's batch files, upload layout)
"""

from sae_kit.analysis.result import (SORT_KEYS, FeatureAnalysis, load_analysis, load_explanations, parse_feature_list,
                                    select_features, strongest_features)
from sae_kit.analysis.streaming import AnalysisConfig, analyze, stream_feature_stats, token_batches

__all__ = ["AnalysisConfig", "FeatureAnalysis", "SORT_KEYS", "analyze", "load_analysis", "load_explanations",
           "parse_feature_list", "select_features", "stream_feature_stats", "strongest_features", "token_batches"]
