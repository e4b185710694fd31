# Every process of a run imports this package before any of our code runs in it (Ray pickles
# our functions and classes by module), so this is the one place that reaches them all.
from culture_rl.core.library_warnings import silence_library_deprecations

silence_library_deprecations()
