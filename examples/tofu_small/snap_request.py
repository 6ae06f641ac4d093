"""Write the SNAP request for the small TOFU protocol: forget01 with its two authors named, and
the 400 retain_perturbed questions as hard positives. Usage: python snap_request.py TOFU_DIR OUT"""
import json
import os
import sys

tofu, out = sys.argv[1], sys.argv[2]
forget = json.load(open(os.path.join(tofu, "forget01.json"), encoding="utf-8"))
for index, item in enumerate(forget):
    item["subject"] = ["Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov"][index // 20]
retain = json.load(open(os.path.join(tofu, "retain_perturbed.json"), encoding="utf-8"))
request = {"name": "tofu-forget01-snap", "forget": forget,
           "retain": [{"question": r["question"], "answer": r["answer"]} for r in retain]}
with open(out + ".tmp", "w", encoding="utf-8") as handle:
    json.dump(request, handle, ensure_ascii=False, indent=1)
os.replace(out + ".tmp", out)
