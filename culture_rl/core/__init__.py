"""What every layer uses and that knows no method and no config: the error types behind the
one-line bad-input messages (:mod:`.errors`), redaction of secrets (:mod:`.redact`), the
storage probe (:mod:`.storage`), checkpoints written whole (:mod:`.checkpoints`) and the
library warnings silenced in every process (:mod:`.library_warnings`)."""
