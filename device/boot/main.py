# The boot stage (device/boot/abboot.py): pick the slot, then run its app, or safe mode. Never updated.
import abboot

_d, _m = abboot.boot(ROLE_SAFE_BOOTS)
del abboot
import gc
import sys

del sys.modules["abboot"]
sys.path.insert(0, _d)  # the slot's modules before anything else of that name
gc.collect()
if _m == "safe":
    import safemode
elif _m == "update":  # a lighting controller's update mode (device/lib/upmode.py: the slot's)
    try:
        import upmode

        upmode.run()
    except Exception as e:  # reset, never the REPL: the marker bounds the retries, safe mode the rest
        import abboot

        abboot.failed(e)
else:
    try:
        import app_main
    except Exception as e:  # the app raised at import: reset (a trial then rolls back)
        import abboot

        abboot.failed(e)
