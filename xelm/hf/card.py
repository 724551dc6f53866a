"""The model card (README.md) of an exported checkpoint: front matter for the Hub, then what
the model was trained on and how to load it."""

from __future__ import annotations


def model_card(card: dict, config: dict, mask: str = "<mask>") -> str:
    langs = card.get("languages") or []
    front = ["---", "library_name: transformers", "pipeline_tag: fill-mask", "tags: [xelm, x-elm]"]
    front += ["language:"] + [f"- {lang}" for lang in langs] if langs else []
    name = card.get("name", "model")
    tokens = card.get("tokens_trained")
    rows = [("languages", ", ".join(langs) or "not recorded"), ("parent", card.get("parent", "not recorded")),
            ("base checkpoint", card.get("base")),
            ("training tokens", f"{tokens:,}" if isinstance(tokens, int) else "not recorded"),
            ("validation loss", card.get("validation_loss")), ("architecture", config["architectures"][0]),
            ("checksum (xelm)", card.get("checksum"))]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows if v is not None)
    return "\n".join(front + ["---", "", f"# xelm {card.get('kind', 'expert')} `{name}`", "",
                              "A cross-lingual expert language model (X-ELM) exported by `xelm export-hf`.", "",
                              "| | |", "|---|---|", table, "", "```python",
                              "from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline",
                              "model = AutoModelForMaskedLM.from_pretrained(PATH)",
                              "tokenizer = AutoTokenizer.from_pretrained(PATH)",
                              'fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)',
                              f'fill("All human beings are born {mask} and equal in dignity.")', "```", ""])
