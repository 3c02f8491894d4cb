"""Model configurations the tests share (imported as ``tests.tiny_configs``)."""

# A Llama small enough to compile in seconds, with grouped-query attention (4 heads, 2 KV).
TINY_LLAMA = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
