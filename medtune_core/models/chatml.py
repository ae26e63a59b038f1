"""The ChatML chat template medtune trains with (SmolLM2, Qwen and the tiny test model speak ChatML).

Generation markers wrap assistant content *and* its end-of-turn token, so assistant-only loss teaches the model
to stop (TRL warns when ``<|im_end|>`` falls outside the assistant mask). Rendered text is identical to the usual
ChatML template: the markers only tell TRL which tokens to train on.
"""

CHATML_TRAINING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
