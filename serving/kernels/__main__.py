"""python -m serving.kernels [DIR]: compile the prebuilt decode kernels (serving.kernels.PREBUILT) into DIR,
by default into the installed package, where `load` finds them on a machine without a C compiler."""

import sys
from pathlib import Path

from serving.kernels import PREBUILT_DIR, prebuild

for built in prebuild(Path(sys.argv[1]) if len(sys.argv) > 1 else PREBUILT_DIR):
    print(built)
