//! medembed-trainer: the train stage. It owns fine-tuning a sentence encoder on the pair-builder's
//! pairs. Built so far: the losses ([`loss`]). The optimizer schedule, evaluation, checkpoints,
//! artifacts, the stage and the `medembed train` command come next (issue 5).

pub mod loss;
