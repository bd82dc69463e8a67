"""Steering: clamp, ablate or add SAE features while the model runs and generates (Scaling Monosemanticity).

    hook       Intervention, SteeringHook, steer / attach: the change at the SAE's hook point
    generate   GenerateOptions, encode_prompt, generate: the same decoding for baseline and steered runs
    sweep      compare, steering_sweep: experiments scored against the baseline (KL, promoted tokens)
    report     side by side in the terminal; report.md, report.html and results.json
"""

from sae_kit.steering.generate import GenerateOptions, encode_prompt, generate
from sae_kit.steering.hook import Intervention, SteeringHook, attach, hook_module, hook_modules, parse_values, steer
from sae_kit.steering.report import format_side_by_side, write_report
from sae_kit.steering.sweep import SteeringResult, compare, load_result, run_steering, steering_sweep

__all__ = ["GenerateOptions", "Intervention", "SteeringHook", "SteeringResult", "attach", "compare", "encode_prompt",
           "format_side_by_side", "generate", "hook_module", "hook_modules", "load_result", "parse_values",
           "run_steering", "steer", "steering_sweep", "write_report"]
