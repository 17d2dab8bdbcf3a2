"""The demo as a Hugging Face Space: this folder (app.py, requirements.txt, README.md) is the whole Space.

The model comes from the Space's variables (Settings -> Variables): SAM_PROMPT_LEARNER_MODEL, a Hub id such as
your-name/sam-plates (default: the embedded tiny SAM), and SAM_PROMPT_LEARNER_COMPARE, the base to show beside it
(default: the base the model records, if any). Locally: `python app.py`, or `sam-prompt-learner demo`.
"""

import os

from sam_prompt_learner.demo import build_demo, load_demo_models

models = load_demo_models(os.environ.get("SAM_PROMPT_LEARNER_MODEL"), os.environ.get("SAM_PROMPT_LEARNER_COMPARE"))
demo, theme = build_demo(models)

if __name__ == "__main__":
    demo.launch(theme=theme)
