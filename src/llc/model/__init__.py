"""The model a posterior is built on: the built-in MLP, its second moments (gram), the `Model`
protocol that every model the samplers see implements, and the localized posterior over it."""
