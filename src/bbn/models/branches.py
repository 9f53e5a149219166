"""BBN's two branches, each with ONE name inside the code: "cb", the conventional learning
branch (uniform sampler, f_c, W_c), and "rb", the re-balancing branch (reversed sampler,
f_r, W_r). Users see the same names (`--branch cb|rb`, eval_cb.json, the cb_block / rb_block
weights); final.json and the report label each branch evaluated alone as the paper does."""

from __future__ import annotations

BRANCHES = ("cb", "rb")
# The paper's names of each branch evaluated alone (W_c f_c + b, W_r f_r + b): final.json keys.
BRANCH_LABELS = {"cb": "BBN-CB", "rb": "BBN-RB"}
