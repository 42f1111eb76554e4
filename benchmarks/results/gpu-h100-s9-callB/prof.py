import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
import xp_probe as xp
import decode
import profile_decode_step as pds
(name, model), = decode.sm1_models(["90m"], torch.device("cuda"), torch.bfloat16).items()
with torch.no_grad():
    for v in (None, "ported", {"CONV_C": 256, "CONV_WARPS": 8, "MIXER_C": 128, "MIXER_WARPS": 4, "FMA": False}):
        xp.use(v)
        print("PROFILE", xp.name_of(v), flush=True)
        pds.profile_step(model, 1024, torch.device("cuda"))
