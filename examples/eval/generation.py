"""Greedy generation for the evaluations: vLLM on GPUs, transformers' `generate` on a CPU (slow: tiny models, tests).

Each conversation (chat messages) is rendered with the policy's own chat template and a generation prompt, kept to
its last `max_prompt_tokens` tokens (the authors truncate prompts on the left), and answered once; the response is
decoded without special tokens, as the authors' evaluations read it.
"""


def pick_engine(engine: str) -> str:
    """`auto` is vLLM where a GPU is visible and transformers elsewhere."""
    if engine != "auto":
        return engine
    import torch

    return "vllm" if torch.cuda.is_available() else "transformers"


def _prompt_ids(tokenizer, conversations, max_prompt_tokens):
    if getattr(tokenizer, "chat_template", None) is None:
        raise SystemExit(f"error: the policy's tokenizer ({tokenizer.name_or_path}) has no chat template")
    rendered = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    return [i[-max_prompt_tokens:] if max_prompt_tokens else i for i in ids]


def generate(
    conversations,
    model: str,
    engine: str = "auto",
    max_new_tokens: int = 1024,
    max_prompt_tokens: int = 0,
    seed: int = 42,
    tensor_parallel_size: int = 1,
    max_model_len: int = 0,
    batch_size: int = 8,
):
    """One greedy response (a string) per conversation. ``max_prompt_tokens`` / ``max_model_len`` 0: no limit."""
    engine = pick_engine(engine)
    if engine == "vllm":
        try:
            from vllm import LLM, SamplingParams
        except ImportError as error:
            raise SystemExit(
                f"error: generating with vLLM needs vLLM ({error}); install vllm, or pass --engine transformers "
                "(slow, CPU)"
            ) from None
        options = {"max_model_len": max_model_len} if max_model_len else {}
        llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size, seed=seed, **options)
        prompts = [
            {"prompt_token_ids": ids} for ids in _prompt_ids(llm.get_tokenizer(), conversations, max_prompt_tokens)
        ]
        params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, seed=seed)
        return [output.outputs[0].text for output in llm.generate(prompts, params, use_tqdm=True)]
    if engine != "transformers":
        raise SystemExit(f"error: unknown engine {engine!r}: auto, vllm or transformers")
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
        policy = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=True).eval()
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot load the policy {model}: {error}") from None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = _prompt_ids(tokenizer, conversations, max_prompt_tokens)
    responses = []
    with tqdm(total=len(prompts), desc="generating", unit="prompt") as progress:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            width = max(map(len, batch))
            # Left padding: every prompt ends where its response starts.
            input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch])
            attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
            with torch.no_grad():
                output = policy.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                )
            responses += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            progress.update(len(batch))
    return responses
