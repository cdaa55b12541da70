"""The pieces ``train.train_loop`` calls, each one job: set-up (``setup``), one optimiser step
(``step``), one epoch (``epoch``), validation with early stopping (``validation``), the resumable
state (``state``) and where it is saved (``checkpoint``), where the numbers go (``sink``), and the
end of a run (``summary``)."""
