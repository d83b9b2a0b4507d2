import json
import pathlib
import tempfile

import numpy as np

from export_tools.synthetic import synthetic_session_index
from sessrec_sdk.bundle import read_bundle, write_bundle

n = 8
index, _ = synthetic_session_index(n, 5, sample=4, seed=1)
out = pathlib.Path(tempfile.mkdtemp()) / "b"
write_bundle(out, encoder=b"x", item_matrix=np.zeros((n, 2), np.float32),
             neighbors=((np.arange(n)[:, None] + np.arange(1, 4)) % n).astype(np.int32),
             item_ids=np.arange(n), popularity=np.arange(n),
             popularity_scores=np.linspace(0.3, 0.01, n), session_index=index,
             sknn={"n_sessions": 5, "sample": 4}, model={"kind": "t", "config": {}},
             inference={"max_session_length": 3, "session_filter": "none"},
             defaults={"category_filter": "none", "exclude_session_items": True})
m = json.loads((out / "manifest.json").read_text())
del m["sknn"]
(out / "manifest.json").write_text(json.dumps(m))
read_bundle(out, verify=False)
