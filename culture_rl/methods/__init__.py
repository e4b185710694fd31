"""The methods, one folder each, above the core (which imports none of them): ALIGN
(:mod:`.align`: SFT on association norms, PPO with the ranking reward), CultureSPA
(:mod:`.culturespa`), CALM with its reflection loop (:mod:`.calm`); plus eliciting a base
model's own associations (:mod:`.elicit`) and the quickstart that runs ALIGN end to end
(:mod:`.quickstart`)."""
