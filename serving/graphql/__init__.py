"""GraphQL at /graphql (strawberry): the REST API's operations as queries and mutations."""
