"""What a sampled reply is scored by: reward models, rules and checkers, weighted into one reward."""
