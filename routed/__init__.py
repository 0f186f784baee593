import logging

# A library logs, a program decides where to: routedctl prints its own notes, so a skipped
# record is not said twice on its stderr; the agent's and controller's handlers still get it.
logging.getLogger("routed").addHandler(logging.NullHandler())
