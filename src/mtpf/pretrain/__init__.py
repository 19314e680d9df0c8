"""Building blocks of the pre-finetuning engine (the recipe itself is mtpf.recipes.pretrain)."""
